"""A real Agent driven over the in-memory hub with codec-encoded messages."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from dagon.agent import Agent, load_agent_config
from dagon.protocol import (
    Ack,
    Announce,
    AssignTasks,
    CancelTasks,
    Codec,
    Control,
    Offline,
    ResultStatus,
    RunId,
    TaskAssignment,
    TaskName,
    TaskResult,
    TasksFinished,
    topics,
)
from dagon.protocol.transport import MemoryHub, MemoryTransport

COORD = "c1"
codec = Codec(sender="coordinator/c1")


@contextlib.asynccontextmanager
async def running_agent(
    hub: MemoryHub, tmp_path: Path, *, slots: int = 2, prefetch: int = 0
) -> AsyncIterator[tuple[Agent, MemoryTransport]]:
    config = load_agent_config(
        config_file=None,
        env={"DAGON_HOME": str(tmp_path / "home")},
        flags={"id": "ag", "slots": slots, "scratch": str(tmp_path / "scratch")},
    )
    config = type(config)(**{**{f: getattr(config, f) for f in config.__dataclass_fields__}, "prefetch": prefetch})
    coordinator = hub.transport()
    async with coordinator, Agent(config=config, connect=lambda will: hub.transport(will=will)) as agent:
        await coordinator.subscribe(topics.coordinator_inbox(COORD))
        yield agent, coordinator


def assign(task: str, command: str, *, runtime: str = "process", attempt: int = 1, **kw: object) -> TaskAssignment:
    return TaskAssignment(RunId("r1"), "wf", TaskName(task), attempt, runtime, command, **kw)  # type: ignore[arg-type]


async def send(coordinator: MemoryTransport, *tasks: TaskAssignment) -> None:
    await coordinator.publish(topics.agent_tasks("ag"), codec.encode(AssignTasks(reply_to=COORD, tasks=tasks)))


async def results(coordinator: MemoryTransport, count: int) -> dict[str, TaskResult]:
    found: dict[str, TaskResult] = {}
    async with asyncio.timeout(20):
        async for msg in coordinator.messages():
            message = codec.decode(msg.payload).message
            if isinstance(message, TasksFinished):
                for result in message.results:
                    found[result.task] = result
                if len(found) >= count:
                    return found
    raise AssertionError("no results")


async def test_announces_runs_and_reports(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path) as (_, coord):
        async with hub.transport() as observer:
            await observer.subscribe(topics.agent_status("ag"))
            status = codec.decode((await anext(observer.messages())).payload).message
            assert isinstance(status, Announce)
            assert "process" in status.capabilities.runtimes
        await send(coord, assign("ok", "echo hello > out.txt; echo to-stdout"), assign("bad", "echo oops >&2; exit 3"))
        found = await results(coord, 2)
    ok, bad = found["ok"], found["bad"]
    assert (ok.status, ok.exit_code) == (ResultStatus.SUCCEEDED, 0)
    assert [o.path for o in ok.outputs] == ["out.txt"]
    assert (Path(ok.workdir) / ".dagon" / "stdout").read_text() == "to-stdout\n"
    assert (Path(ok.workdir) / ".dagon" / "command").read_text().startswith("echo hello")
    assert ok.cpu_time >= 0 and ok.max_rss > 0
    assert (bad.status, bad.exit_code) == (ResultStatus.FAILED, 3)
    assert "oops" in bad.stderr_tail


async def test_python_runtime(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=8) as (_, coord):
        await send(
            coord,
            assign("noop", "dagon.agent.builtins:noop", runtime="python"),
            assign("echo", "dagon.agent.builtins:echo", runtime="python", args=({"k": [1, 2]},)),
            assign("boom", "json:loads", runtime="python", args=("{not json",)),
            assign("missing", "no.such.module:fn", runtime="python"),
            assign("slow", "dagon.agent.builtins:sleep", runtime="python", args=(2,), timeout=0.2),
            assign("odd", "builtins:dict", runtime="python", kwargs={}),
            assign("keys", "dagon.agent.builtins:echo", runtime="python", args=([1],)),
        )
        found = await results(coord, 7)
    assert found["noop"].status is ResultStatus.SUCCEEDED and found["noop"].workdir == ""
    assert found["echo"].value == {"k": [1, 2]}
    assert found["boom"].status is ResultStatus.FAILED and "JSONDecodeError" in found["boom"].stderr_tail
    assert found["missing"].status is ResultStatus.ERROR and "no.such.module" in found["missing"].error
    assert found["slow"].status is ResultStatus.TIMEOUT
    assert found["odd"].status is ResultStatus.SUCCEEDED and found["odd"].value == {}
    assert found["keys"].value == [1]


async def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1].startswith("Z")
    return True


async def test_timeout_and_cancel_kill_the_process_group(hub: MemoryHub, tmp_path: Path) -> None:
    t_pid, c_pid = tmp_path / "t.pid", tmp_path / "c.pid"
    async with running_agent(hub, tmp_path) as (_, coord):
        await send(
            coord,
            assign("slow", f"sleep 100 & echo $! > {t_pid}; wait", timeout=0.5),
            assign("victim", f"sleep 100 & echo $! > {c_pid}; wait"),
        )
        async with asyncio.timeout(10):
            while not (c_pid.exists() and c_pid.read_text().strip()):
                await asyncio.sleep(0.02)
        ref = assign("victim", "").ref
        await coord.publish(topics.agent_tasks("ag"), codec.encode(CancelTasks(tasks=(ref,), reason="test")))
        found = await results(coord, 2)
        async with asyncio.timeout(5):
            while not (await _dead(int(t_pid.read_text())) and await _dead(int(c_pid.read_text()))):
                await asyncio.sleep(0.05)
    assert found["slow"].status is ResultStatus.TIMEOUT
    assert found["victim"].status is ResultStatus.CANCELLED


async def test_over_capacity_and_unknown_runtime_are_refused(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=1, prefetch=0) as (_, coord):
        await send(coord, assign("a", "sleep 0.3"), assign("b", "true"), assign("c", "x", runtime="quantum"))
        async with asyncio.timeout(5):
            async for msg in coord.messages():
                ack = codec.decode(msg.payload).message
                if isinstance(ack, Ack):
                    break
        assert ack.accepted == 1
        reasons = {r.task.task: (r.permanent, r.reason) for r in ack.rejected}
        assert reasons["b"][0] is False and "slots" in reasons["b"][1]
        assert reasons["c"][0] is True and "quantum" in reasons["c"][1]


async def test_garbage_is_counted_and_the_agent_keeps_serving(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path) as (agent, coord):
        for payload in (b"", b"\xff\x00", b"\x81\xa1v\x01", codec.encode(Control(action="self-destruct"))):
            await coord.publish(topics.agent_tasks("ag"), payload)
            await coord.publish(topics.agent_control("ag"), payload)
        await send(coord, assign("after", "true"))
        found = await results(coord, 1)
        assert found["after"].status is ResultStatus.SUCCEEDED
        assert agent.rejections["malformed"] >= 4
        assert agent.rejections["unexpected"] + agent.rejections["value"] >= 2


async def test_clean_shutdown_kills_tasks_and_publishes_offline(hub: MemoryHub, tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    async with hub.transport() as observer:
        await observer.subscribe(topics.agent_status("ag"), topics.coordinator_inbox(COORD))
        async with running_agent(hub, tmp_path) as (_, coord):
            await send(coord, assign("long", f"echo $$ > {pid}; sleep 100"))
            async with asyncio.timeout(10):
                while not (pid.exists() and pid.read_text().strip()):
                    await asyncio.sleep(0.02)
        seen = []
        async with asyncio.timeout(5):
            async for msg in observer.messages():
                seen.append(codec.decode(msg.payload).message)
                if isinstance(seen[-1], Offline):
                    break
    assert seen[-1].reason == "shutdown"  # type: ignore[union-attr]
    finished = [m for m in seen if isinstance(m, TasksFinished)]
    assert finished and finished[-1].results[0].status is ResultStatus.CANCELLED
    assert await _dead(int(pid.read_text()))


async def test_unencodable_return_value_fails_only_its_task(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path) as (_, coord):
        await send(
            coord,
            assign("intkeys", "dagon.agent.builtins:echo", runtime="python", args=({"k": 1},)),
            assign("fine", "dagon.agent.builtins:noop", runtime="python"),
        )
        found = await results(coord, 2)
        # a value msgpack packs but the wire contract refuses (non-str keys) is an ERROR, not a crash
        await send(coord, assign("bad", "tests.agent.test_agent:_int_keys", runtime="python"))
        bad = await results(coord, 1)
    assert found["intkeys"].value == {"k": 1}
    assert found["fine"].status is ResultStatus.SUCCEEDED
    assert bad["bad"].status is ResultStatus.ERROR
    assert "map keys must be strings" in bad["bad"].error


def _int_keys() -> dict[int, str]:
    return {1: "one"}
