"""Tier 2: waiting reasons and scratch peaks through the coordinator (in-memory transport, real codec)."""

from __future__ import annotations

from pathlib import Path

import dagon
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack


async def test_a_task_waiting_for_its_busy_agent_says_why_once(tmp_path: Path) -> None:
    async with memory_stack(MemoryHub(), tmp_path, agents=2, slots=1) as (coordinator, _):
        memory = coordinator.engine.agents["agent0"].capabilities.memory  # type: ignore[index]
        wf = dagon.Workflow("wait")
        # Each holds all of agent0's memory: with prefetch places free, only the memory slot stops the second.
        wf.shell("first", "sleep 0.5; echo 1 > out.txt", agent="agent0", memory=memory)
        wf.shell("second", "sleep 0.5; echo 22 > out.txt", agent="agent0", memory=memory)
        run = await coordinator.submit(wf)
        events = [e async for e in coordinator.events(run)]
        result = await coordinator.wait(run)
    assert result.ok, result.cause
    waiting = [e for e in events if e.cause.startswith("waiting:")]
    assert len(waiting) == 1, waiting  # once per change of reason, not per scheduling pass
    assert waiting[0].state == "ready"
    assert waiting[0].cause == "waiting: 1 eligible agent(s) busy"
    assert waiting[0].task in ("first", "second")
    assert result.scratch_peak == {"agent0": 5}  # "1\n" and "22\n": neither is read by another task
