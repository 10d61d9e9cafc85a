"""A real Agent driven over the in-memory hub with codec-encoded messages."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import msgpack
from _keys import COORDINATOR, agent_security

from dagon.agent import Agent
from dagon.protocol import (
    Ack,
    AgentId,
    Announce,
    AssignTasks,
    Codec,
    Heartbeat,
    Offline,
    Rejection,
    ResultStatus,
    TasksFinished,
    TasksStarted,
    Telemetry,
    topics,
)
from dagon.protocol.transport import MemoryHub, MemoryTransport, Will

from ._support import AGENT, agent_config, assign, codec, running_agent, wait_for_pid, wait_gone


async def test_announce_is_retained_and_heartbeats_flow(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, heartbeat_interval=0.05) as (agent, _), hub.transport() as observer:
        await observer.subscribe(topics.agent_status(AGENT), topics.agent_telemetry(AGENT))
        first = await anext(observer.messages())
        assert first.retain
        status = codec.decode(first.payload).message
        assert isinstance(status, Announce)
        caps = status.capabilities
        assert caps.runtimes == ("process", "python", "sensor", "actuator") and caps.slots == 2 and caps.host_id
        assert caps == agent.capabilities
        beat = codec.decode((await anext(observer.messages())).payload).message
        while isinstance(beat, Telemetry):  # node samples share the topic with heartbeats
            beat = codec.decode((await anext(observer.messages())).payload).message
        assert isinstance(beat, Heartbeat) and beat.free_slots == 2


async def test_shell_success_failure_and_manifest(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path) as (_, coord):
        await coord.assign(
            assign("ok", "mkdir -p d && echo hello > d/out.txt; echo to-stdout; echo $DAGON_TASK $DAGON_ATTEMPT"),
            assign("bad", "echo oops >&2; exit 3", env={"X": "1"}),
        )
        found = await coord.results(2)
    ok, bad = found["ok"], found["bad"]
    assert (ok.status, ok.exit_code, ok.error) == (ResultStatus.SUCCEEDED, 0, "")
    workdir = Path(ok.workdir)
    assert workdir == tmp_path / "scratch" / "r1" / "ok-1"
    assert (workdir / ".dagon" / "stdout").read_text() == "to-stdout\nok 1\n"
    assert (workdir / ".dagon" / "command").read_text().startswith("mkdir -p d")
    [out] = ok.outputs
    assert (out.path, out.size, out.sha256) == ("d/out.txt", 6, hashlib.sha256(b"hello\n").hexdigest())
    assert ok.cpu_time >= 0 and ok.max_rss > 0 and ok.finished_at >= ok.started_at
    assert (bad.status, bad.exit_code, bad.stderr_tail) == (ResultStatus.FAILED, 3, "oops\n")
    assert not [m for m in coord.seen if isinstance(m, Ack)]  # nothing refused: no Ack


async def test_signal_death_is_128_plus_signo(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path) as (_, coord):
        await coord.assign(assign("sig", "kill -9 $$"))
        result = (await coord.results(1))["sig"]
    assert (result.status, result.exit_code) == (ResultStatus.FAILED, 137)


async def test_timeout_and_cancel_kill_the_process_group(hub: MemoryHub, tmp_path: Path) -> None:
    t_pid, c_pid = tmp_path / "t.pid", tmp_path / "c.pid"
    async with running_agent(hub, tmp_path) as (_, coord):
        await coord.assign(
            assign("slow", f"bash -c 'sleep 100 & echo $! > {t_pid}; wait'", timeout=0.3),
            assign("victim", f"bash -c 'sleep 100 & echo $! > {c_pid}; wait'"),
        )
        victim_pid = await wait_for_pid(c_pid)
        await coord.cancel(assign("victim", "").ref)
        found = await coord.results(2)
        await wait_gone(await wait_for_pid(t_pid), victim_pid)
    assert found["slow"].status is ResultStatus.TIMEOUT and "timeout" in found["slow"].error
    assert found["victim"].status is ResultStatus.CANCELLED


async def test_python_runtime(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=10) as (_, coord):
        await coord.assign(
            assign("noop", "dagon.agent.builtins:noop", runtime="python"),
            assign("value", "dagon.agent.builtins:echo", runtime="python", args=({"k": [1, 2]},)),
            assign("boom", "json:loads", runtime="python", args=("{not json",)),
            assign("exit", "sys:exit", runtime="python", args=(4,)),
            assign("missing", "no.such.module:fn", runtime="python"),
            assign("slow", "dagon.agent.builtins:sleep", runtime="python", args=(1,), timeout=0.1),
            assign("kwargs", "builtins:dict", runtime="python", kwargs={"a": 1}),
            assign("intkeys", "builtins:dict", runtime="python", args=([[1, "one"]],)),
            assign("set", "builtins:set", runtime="python", args=([1],)),
            assign("big", "builtins:bytes", runtime="python", args=(70_000,)),
        )
        found = await coord.results(10)
    assert found["noop"].status is ResultStatus.SUCCEEDED and found["noop"].workdir == ""
    assert not (tmp_path / "scratch" / "r1").exists()  # no directory for python tasks without inputs
    assert found["value"].value == {"k": [1, 2]}
    boom = found["boom"]
    assert (boom.status, boom.exit_code) == (ResultStatus.FAILED, 1)
    assert "JSONDecodeError" in boom.stderr_tail and "JSONDecodeError" in boom.error
    assert found["exit"].status is ResultStatus.FAILED and "SystemExit: 4" in found["exit"].stderr_tail
    assert found["missing"].status is ResultStatus.ERROR and "no.such.module:fn" in found["missing"].error
    assert found["slow"].status is ResultStatus.TIMEOUT
    assert found["kwargs"].value == {"a": 1}
    assert found["intkeys"].status is ResultStatus.ERROR and "map keys must be strings" in found["intkeys"].error
    assert found["set"].status is ResultStatus.ERROR and "'set' is not plain data" in found["set"].error
    assert found["big"].status is ResultStatus.ERROR and "64" in found["big"].error


async def test_over_capacity_and_unknown_runtime_are_refused(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=1, prefetch=0) as (_, coord):
        await coord.assign(assign("a", "sleep 0.2"), assign("b", "true"), assign("c", "x", runtime="quantum"))
        ack = await coord.next(Ack)
        assert ack.accepted == 1
        reasons: dict[str, Rejection] = {r.task.task: r for r in ack.rejected}
        assert set(reasons) == {"b", "c"}
        assert not reasons["b"].permanent and "slots" in reasons["b"].reason
        assert reasons["c"].permanent and "quantum" in reasons["c"].reason
        assert (await coord.results(1))["a"].status is ResultStatus.SUCCEEDED


async def test_prefetched_task_waits_for_a_slot_and_can_be_cancelled(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=1, prefetch=2) as (_, coord):
        await coord.assign(assign("first", "sleep 0.3"), assign("queued", "true"), assign("dropped", "true"))
        await coord.cancel(assign("dropped", "").ref)
        found = await coord.results(3)
    assert found["dropped"].status is ResultStatus.CANCELLED
    assert found["queued"].started_at >= found["first"].finished_at - 0.05  # one slot: one after the other
    assert not [m for m in coord.seen if isinstance(m, Ack)]


async def test_duplicate_assignment_is_ignored(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=4) as (agent, coord):
        task = assign("once", "echo x >> count.txt; sleep 0.2")
        await coord.assign(task)
        await coord.next(TasksStarted)
        await coord.assign(task)
        result = (await coord.results(1))["once"]
        assert (Path(result.workdir) / "count.txt").read_text() == "x\n"
        await asyncio.sleep(0.05)
        assert agent.completed == 1


async def test_started_is_never_after_finished_and_reports_are_batched(hub: MemoryHub, tmp_path: Path) -> None:
    count = 50
    async with running_agent(hub, tmp_path, slots=8, prefetch=count) as (_, coord):
        await coord.assign(*(assign(f"t{i}", "dagon.agent.builtins:noop", runtime="python") for i in range(count)))
        await coord.results(count)
    started_at: dict[str, int] = {}
    finished_at: dict[str, int] = {}
    for index, message in enumerate(coord.seen):
        if isinstance(message, TasksStarted):
            started_at.update({t.task: index for t in message.tasks})
        elif isinstance(message, TasksFinished):
            finished_at.update({r.task: index for r in message.results})
    assert set(finished_at) == {f"t{i}" for i in range(count)}
    # a start is reported before its result, or not at all (a short task's result replaces it)
    assert set(started_at) <= set(finished_at)
    assert all(started_at[t] < finished_at[t] for t in started_at)
    assert len(coord.seen) < 2 * count  # coalesced: fewer messages than reports


async def test_garbage_wrong_types_and_unknown_ops_are_counted(hub: MemoryHub, tmp_path: Path) -> None:
    def signed(body: dict[str, object]) -> bytes:
        data = msgpack.packb(body)
        packed: bytes = msgpack.packb([COORDINATOR.key_id, COORDINATOR.sign(data), data])
        return packed

    wrong_type = signed({"v": 1, "op": "assign", "id": "x", "ts": 1.0, "src": "c", "reply_to": 5, "tasks": []})
    unknown_op = signed({"v": 1, "op": "explode", "id": "x", "ts": 1.0, "src": "c"})
    unsigned = Codec(sender="c").encode(AssignTasks(reply_to="c1", tasks=(assign("unsigned", "touch marker"),)))
    async with running_agent(hub, tmp_path) as (agent, coord):
        for topic in (topics.agent_tasks(AGENT), topics.agent_control(AGENT)):
            for payload in (b"", b"\xff\x00garbage", wrong_type, unknown_op, unsigned):
                await coord.raw(topic, payload)
        await coord.control("self-destruct")
        await coord.raw(topics.agent_tasks(AGENT), codec.encode(Offline(agent=AgentId(AGENT))))  # not meant for agents
        await coord.assign(assign("after", "true"))
        assert (await coord.results(1))["after"].status is ResultStatus.SUCCEEDED
        assert agent.rejections["malformed"] == 4
        assert agent.rejections["type"] == 2
        assert agent.rejections["unknown_op"] == 2
        assert agent.rejections["unknown_action"] == 1
        assert agent.rejections["unexpected"] == 1
        assert agent.rejections["unsigned"] == 2
        assert not list(tmp_path.rglob("marker"))  # noqa: ASYNC240 - a test assertion after the run


async def test_bad_names_give_an_error_result(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=4) as (_, coord):
        await coord.assign(assign("..", "true"), assign("t", "true", run="a/b"), assign("n", "true", run="x\x00"))
        found = await coord.results(3)
    assert {r.status for r in found.values()} == {ResultStatus.ERROR}
    assert "cannot be used as a directory name" in found[".."].error
    assert "run name 'a/b'" in found["t"].error


async def test_control_announce_and_shutdown(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path) as (agent, coord), hub.transport() as observer:
        await observer.subscribe(topics.agent_status(AGENT))
        messages = observer.messages()
        assert (await anext(messages)).retain
        await coord.control("announce")
        again = await anext(messages)
        assert not again.retain and isinstance(codec.decode(again.payload).message, Announce)
        await coord.control("shutdown")
        async with asyncio.timeout(5):
            await agent.serve_forever()
        assert agent.stopped.is_set()


async def test_clean_shutdown_kills_tasks_and_publishes_offline(hub: MemoryHub, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with running_agent(hub, tmp_path) as (agent, coord):
        await coord.assign(assign("long", f"bash -c 'sleep 100 & echo $! > {pid_file}; wait'"))
        pid = await wait_for_pid(pid_file)
        await agent.stop()
        result = (await coord.results(1))["long"]
        await agent.stop()  # idempotent
    assert result.status is ResultStatus.CANCELLED
    await wait_gone(pid)
    async with hub.transport() as late:  # subscribes after the agent left: the Offline is retained
        await late.subscribe(topics.agent_status(AGENT))
        msg = await anext(late.messages())
    offline = codec.decode(msg.payload).message
    assert msg.retain and isinstance(offline, Offline) and offline.reason == "shutdown"


async def test_lost_connection_leaves_the_will(hub: MemoryHub, tmp_path: Path) -> None:
    transports: list[MemoryTransport] = []

    def connect(will: Will) -> MemoryTransport:
        transports.append(hub.transport(will=will))
        return transports[-1]

    async with Agent(config=agent_config(tmp_path), connect=connect, **agent_security()):
        hub.kill(transports[0])
        async with hub.transport() as observer:
            await observer.subscribe(topics.agent_status(AGENT))
            will = codec.decode((await anext(observer.messages())).payload).message
    assert isinstance(will, Offline) and will.reason == "connection lost"


async def test_python_process_pool(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, python_pool="process", python_workers=1) as (_, coord):
        await coord.assign(
            assign("value", "dagon.agent.builtins:echo", runtime="python", args=([1, "two"],)),
            assign("boom", "json:loads", runtime="python", args=("{",)),
        )
        found = await coord.results(2)
    assert found["value"].value == [1, "two"]
    assert found["boom"].status is ResultStatus.FAILED and "JSONDecodeError" in found["boom"].stderr_tail
