"""Tier 2: coordinator + real agents in one process over the in-memory hub.

Every message goes through the real msgpack codec; tasks are real bash
processes in real scratch directories.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import dagon
from dagon.core import RunState, TaskState, ValidationError
from dagon.protocol import Codec, Control, topics
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack, taskflow


async def test_demo_dag_runs_in_order_with_staged_data(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        run = await coordinator.submit(taskflow())
        events = [e async for e in coordinator.events(run)]
        result = await coordinator.wait(run)
    assert result.state is RunState.SUCCEEDED, result.cause
    e = result["E"]
    assert e.exit_code == 0
    assert (Path(e.workdir) / "result.txt").read_text() == "B\nfrom-A\nC\nfrom-A\n"
    assert {o.path for o in e.outputs} == {"result.txt"}
    # dependency order: nothing was dispatched before its producers succeeded
    done: set[str] = set()
    producers = {"A": set(), "B": {"A"}, "C": {"A"}, "D": {"B", "C"}, "E": {"D"}}
    for event in events:
        if event.state == "dispatched":
            assert event.task is not None
            assert producers[event.task] <= done, f"{event.task} dispatched before {producers[event.task] - done}"
        if event.state == "succeeded" and event.task:
            done.add(event.task)
    assert done == set(producers)
    assert events[-1].task is None and events[-1].state == "succeeded"


async def test_failure_propagates_and_independent_branch_continues(hub: MemoryHub, tmp_path: Path) -> None:
    wf = dagon.Workflow("fail")
    wf.shell("bad", "echo boom >&2; exit 3")
    wf.shell("child", "cat workflow:///bad/x")
    wf.shell("grandchild", "true", after=["child"])
    wf.shell("other", "echo fine > ok.txt")
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf))
    assert result.state is RunState.FAILED
    assert result["bad"].state is TaskState.FAILED
    assert result["bad"].exit_code == 3
    assert "boom" in result["bad"].stderr_tail
    assert result["child"].state is TaskState.UPSTREAM_FAILED
    assert result["grandchild"].state is TaskState.UPSTREAM_FAILED
    assert result["other"].state is TaskState.SUCCEEDED
    with pytest.raises(dagon.TaskFailed, match="bad"):
        result.raise_for_status()


async def test_retries_eventually_succeed(hub: MemoryHub, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    wf = dagon.Workflow("retry")
    wf.shell(
        "flaky",
        f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -ge 2 ]",
        retry=dagon.Retry(attempts=3, backoff=0.05, max_backoff=0.1),
    )
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf))
    assert result.ok, result.cause
    assert result["flaky"].attempt == 3
    assert counter.read_text().strip() == "3"


async def test_timeout_kills_the_process_group(hub: MemoryHub, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    wf = dagon.Workflow("timeout")
    wf.shell("sleepy", f"sleep 300 & echo $! > {pidfile}; wait", timeout=0.5)
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf))
    assert result["sleepy"].state is TaskState.FAILED
    assert "timed out" in result["sleepy"].cause
    pid = int(pidfile.read_text())
    await _wait_dead(pid)


async def _wait_dead(pid: int) -> None:
    async with asyncio.timeout(5):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            # a zombie not yet reaped by init still answers kill(0); check its state
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(") ")[1].startswith("Z"):
                        return
            except FileNotFoundError:
                return
            await asyncio.sleep(0.05)


async def test_run_cancellation_kills_running_tasks(hub: MemoryHub, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    wf = dagon.Workflow("cancel")
    wf.shell("long", f"echo $$ > {pidfile}; sleep 300")
    wf.shell("after", "true", after=["long"])
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        run = await coordinator.submit(wf)
        async with asyncio.timeout(10):
            while not pidfile.exists() or not pidfile.read_text().strip():
                await asyncio.sleep(0.02)
        await coordinator.cancel(run)
        result = await coordinator.wait(run)
        await _wait_dead(int(pidfile.read_text()))
    assert result.state is RunState.CANCELLED
    assert result["long"].state is TaskState.CANCELLED
    assert result["after"].state is TaskState.CANCELLED


async def test_two_agents_share_work(hub: MemoryHub, tmp_path: Path) -> None:
    wf = dagon.Workflow("share")
    for i in range(12):
        wf.shell(f"t{i}", "sleep 0.1")
    async with memory_stack(hub, tmp_path, agents=2, slots=2) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf))
    assert result.ok
    used = {t.agent for t in result.tasks.values()}
    assert used == {"agent0", "agent1"}


async def test_validation_error_before_anything_runs(hub: MemoryHub, tmp_path: Path) -> None:
    wf = dagon.Workflow("cycle")
    wf.shell("a", "cat workflow:///b/x")
    wf.shell("b", "cat workflow:///a/x")
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        with pytest.raises(ValidationError, match="cycle"):
            await coordinator.submit(wf)
        assert coordinator.engine.runs == {}
    assert [p.name for p in (tmp_path / "agent0" / "scratch").iterdir()] == [".dagon-scratch"]  # no task dirs


GARBAGE = [b"", b"\x00\xff garbage", b"\x81\xa1v\x01", b"\xc1", b"\x92\x01\x02", b"{}"]


async def test_malformed_messages_on_every_topic_leave_everyone_serving(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, agents):
        agent = agents[0]
        agent_id = agent.config.agent_id
        intruder = hub.transport()
        codec = Codec(sender="intruder")
        async with intruder:
            # valid, but on topics where it is not accepted
            wrong_way = codec.encode(Control(action="shutdown"), to="agent/agent0")
            for topic in (
                topics.agent_tasks(agent_id),
                topics.agent_control(agent_id),
                topics.agent_telemetry(agent_id),
                topics.coordinator_inbox(coordinator.id),
                topics.agent_status("ghost"),
            ):
                for payload in [*GARBAGE, wrong_way if "control" not in topic else b"\x90"]:
                    await intruder.publish(topic, payload)
            await asyncio.sleep(0.2)
        assert sum(coordinator.rejections.values()) > 0
        assert sum(agent.rejections.values()) > 0
        result = await coordinator.wait(await coordinator.submit(taskflow()))
        assert result.ok, result.cause


async def test_a_task_too_big_to_send_fails_alone(hub: MemoryHub, tmp_path: Path) -> None:
    wf = dagon.Workflow("big")
    wf.shell("huge", "echo " + "x" * 200_000)
    wf.shell("small", "echo ok")
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        coordinator.codec.max_size = 100_000
        result = await coordinator.wait(await coordinator.submit(wf))
    assert result["huge"].state is TaskState.FAILED
    assert "cannot be sent" in result["huge"].cause
    assert result["small"].ok


def test_python_arguments_must_be_plain_data() -> None:
    wf = dagon.Workflow("args")
    with pytest.raises(ValidationError, match="plain data"):
        wf.python("p", "dagon.agent.builtins:echo", {1, 2})


async def test_the_run_store_records_the_run(hub: MemoryHub, tmp_path: Path) -> None:
    from dagon.core import RunStore

    async with memory_stack(hub, tmp_path) as (coordinator, _):
        run = await coordinator.submit(taskflow())
        result = await coordinator.wait(run)
    assert result.ok
    store = RunStore(tmp_path / "runs.sqlite")  # written behind, flushed on exit
    try:
        record = store.get_run(run)
        assert record is not None
        assert (record.workflow, record.state) == ("taskflow", "succeeded")
        tasks = {t.name: t for t in store.tasks(run)}
        assert set(tasks) == {"A", "B", "C", "D", "E"}
        assert tasks["E"].state == "succeeded"
        assert tasks["E"].result is not None and tasks["E"].result["exit_code"] == 0
        moves = [(t[1], t[3]) for t in store.transitions(run)]
        assert ("A", "dispatched") in moves and ("E", "succeeded") in moves
        assert all(new != "ready" for _, new in moves if _ == "A")  # derived state is not stored
    finally:
        store.close()
