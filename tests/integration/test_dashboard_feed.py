"""The dashboard's feed on a real coordinator (in-memory transport, real codec and agents):
snapshot plus deltas give the final state, a page that stops reading is cut off, not buffered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import dagon
from dagon._ui import Dashboard, UiFeed, load_or_create_token
from dagon._ui._docs import layers
from dagon._ui._feed import QUEUE
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack


def test_layers_are_depths_and_survive_cycles_and_strangers() -> None:
    deps = {"b": ["a"], "c": ["a", "b"], "d": ["elsewhere"], "x": ["y"], "y": ["x"]}
    depth = layers(["a", "b", "c", "d", "x", "y"], deps)
    assert depth["a"] == 0 and depth["b"] == 1 and depth["c"] == 2 and depth["d"] == 0
    assert set(depth) == {"a", "b", "c", "d", "x", "y"}  # a cycle still terminates


def chain(n: int) -> dagon.Workflow:
    wf = dagon.Workflow("chain")
    for i in range(n):
        wf.shell(f"s{i}", "true", after=[f"s{i - 1}"] if i else [])
    return wf


async def test_snapshot_then_deltas_give_the_final_state(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        async with Dashboard(coordinator, token=load_or_create_token(tmp_path / "home")) as ui:
            feed: UiFeed = ui.feed
            run = await coordinator.submit(chain(12))
            while coordinator.engine.run(run).counts.get(dagon.TaskState.SUCCEEDED, 0) < 3:
                await asyncio.sleep(0.01)
            with feed.page("run", run) as page:  # opened mid-run
                snapshot = await feed.run_snapshot(run)
                assert snapshot is not None
                states = dict(zip(snapshot["tasks"]["names"], snapshot["tasks"]["states"], strict=True))
                bars = {(b[0], b[1]): b for b in snapshot["bars"]}
                assert states["s0"] == "succeeded" and states["s11"] == "pending"
                await coordinator.wait(run)
                while True:
                    async with asyncio.timeout(5):
                        event, data = await page.queue.get()
                    assert event == "delta"
                    doc = json.loads(data)
                    for name, state, _attempt, _agent in doc["tasks"]:
                        states[name] = state
                    bars.update({(b[0], b[1]): b for b in doc["bars"]})
                    if doc["run"]["state"] == "succeeded" and all(s == "succeeded" for s in states.values()):
                        break
            assert set(bars) == {(f"s{i}", 1) for i in range(12)}
            assert all(b[5] == "succeeded" for b in bars.values())
        assert feed not in coordinator.listeners  # the listener leaves with the dashboard


async def test_a_page_that_stops_reading_is_told_to_resync_not_buffered(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        feed = UiFeed(coordinator)
        coordinator.add_listener(feed)
        stuck, reading = feed.page("runs"), feed.page("runs")
        with stuck as slow, reading as fast:
            got: list[Any] = []
            run = await coordinator.submit(chain(1))
            for i in range(QUEUE + 10):
                feed._dirty_runs.add(run)
                feed.flush(10.0 * (i + 1))  # each flush a "slow" round (the runs list goes out at most 1/s)
                while not fast.queue.empty():
                    got.append(fast.queue.get_nowait())
            assert slow.stale and slow.queue.qsize() == QUEUE
            assert not fast.stale and len(got) == QUEUE + 10


async def test_listeners_hear_agents_come_and_go(hub: MemoryHub, tmp_path: Path) -> None:
    from dagon.core import AgentChanged, CoordinatorListener

    from ._stack import hub_agent

    class Recorder(CoordinatorListener):
        def __init__(self) -> None:
            self.changes: list[AgentChanged] = []

        def agent_changed(self, change: AgentChanged) -> None:
            self.changes.append(change)

    recorder = Recorder()
    async with memory_stack(hub, tmp_path, agents=0) as (coordinator, _):
        coordinator.add_listener(recorder)
        async with hub_agent(hub, tmp_path, "visitor"):
            await coordinator.wait_for_agents(1)
        async with asyncio.timeout(10):
            while not any(not c.online for c in recorder.changes):
                await asyncio.sleep(0.02)
    assert [(c.agent, c.online) for c in recorder.changes] == [("visitor", True), ("visitor", False)]
