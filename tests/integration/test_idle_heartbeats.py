"""An idle agent's heartbeats cost the coordinator no drive pass (issue 21: a fleet of 500 sent 100
heartbeats a second, each waking a pass that found nothing to do), and work still flows at once.

A real coordinator and a real agent over the in-memory hub; the engine's ``schedule`` (called once
per drive pass) is wrapped to count the passes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from _keys import coordinator_security

import dagon
from dagon.core import Command, Coordinator
from dagon.protocol import AgentId
from dagon.protocol.transport import MemoryHub

from ._stack import hub_agent


async def test_an_idle_agents_heartbeats_wake_no_drive_pass_and_a_run_still_starts_at_once(
    hub: MemoryHub, tmp_path: Path
) -> None:
    coordinator = Coordinator(
        connect=lambda will: hub.transport(will=will), coordinator_id="test", **coordinator_security()
    )
    agent = hub_agent(hub, tmp_path, "agent0", heartbeat_interval=0.05, telemetry_interval=0)
    async with coordinator, agent:
        async with asyncio.timeout(30):
            await coordinator.wait_for_agents(1)
        await asyncio.sleep(0.5)  # the announce and its challenge are behind us
        engine = coordinator.engine
        schedule, passes = engine.schedule, 0

        def counting(now: float) -> list[Command]:
            nonlocal passes
            passes += 1
            return schedule(now)

        engine.schedule = counting  # type: ignore[method-assign]
        seen = engine.agents[AgentId("agent0")].last_seen
        await asyncio.sleep(2.0)
        idle_passes = passes
        assert engine.agents[AgentId("agent0")].last_seen >= seen + 1.0  # heartbeats kept coming, and counted
        assert idle_passes <= 5, idle_passes  # one per heartbeat would be ~40
        wf = dagon.Workflow("after-idle")
        wf.shell("a", "true")
        wf.shell("b", "true", after=["a"])
        async with asyncio.timeout(30):
            result = await coordinator.wait(await coordinator.submit(wf))
        assert result.ok, result.cause
        assert passes > idle_passes  # the run's own events drive it
