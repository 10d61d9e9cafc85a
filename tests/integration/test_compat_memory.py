"""Tier 2: meta-workflow references, dynamic fan-out and the runtime check through a real
Coordinator and real Agents over the in-memory hub (every message through the real codec)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import dagon
from dagon.core import RunState, ValidationError
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack


async def test_consumer_run_waits_for_the_producing_runs_task(hub: MemoryHub, tmp_path: Path) -> None:
    prod = dagon.Workflow("Prod", config={})
    prod.shell("make", "sleep 0.4 && echo produced > out.txt")
    cons = dagon.Workflow("Cons", config={})
    cons.shell("use", "tr a-z A-Z < workflow://Prod/make/out.txt > loud.txt")
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        p = await coordinator.submit(prod)
        c = await coordinator.submit(cons)  # while 'make' still runs
        assert coordinator.engine.run(c).tasks["use"].state.value == "pending"
        consumer = await coordinator.wait(c)
        producer = await coordinator.wait(p)
    assert producer.ok and consumer.ok, consumer.cause
    assert (Path(consumer["use"].workdir) / "loud.txt").read_text() == "PRODUCED\n"


async def test_unknown_workflow_and_missing_runtime_are_refused_at_submission(hub: MemoryHub, tmp_path: Path) -> None:
    cons = dagon.Workflow("Cons", config={})
    cons.shell("use", "cat workflow://Nowhere/make/out.txt")
    boxed = dagon.Workflow("Boxed", config={})
    boxed.shell("a", "true")
    boxed.shell("b", "true", runtime="nomad", runtime_options={"image": "busybox"})
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        with pytest.raises(ValidationError, match="no run on this coordinator"):
            await coordinator.submit(cons)
        with pytest.raises(ValidationError, match=r"no online agent offers runtime 'nomad' \(needed by task\(s\) b\)"):
            await coordinator.submit(boxed)
        assert coordinator.engine.runs == {}
    assert [p.name for p in (tmp_path / "agent0" / "scratch").iterdir()] == [".dagon-scratch"]  # no task dirs


async def test_dynamic_fan_out_runs_one_task_per_produced_file(hub: MemoryHub, tmp_path: Path) -> None:
    wf = dagon.Workflow("Fan", config={})
    wf.shell("make", "mkdir out && for i in 1 2 3 4 5; do echo $i > out/n$i.txt; done")
    squares = wf.map(
        "sq", "n=$(cat workflow:///make/out/*.txt); echo $((n * n)) > sq.txt", over="workflow:///make/out/*.txt"
    )
    wf.gather("sum", "cat {inputs} | awk '{s += $1} END {print s}' > sum.txt", over=squares, path="sq.txt")
    async with memory_stack(hub, tmp_path, agents=2, slots=2) as (coordinator, _):
        run = await coordinator.submit(wf)
        async with asyncio.timeout(30):
            result = await coordinator.wait(run)
    assert result.state is RunState.SUCCEEDED, result.cause
    assert sorted(n for n in result.tasks if n.startswith("sq_")) == [f"sq_n{i}" for i in range(1, 6)]
    assert (Path(result["sum"].workdir) / "sum.txt").read_text() == "55\n"
