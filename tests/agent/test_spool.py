"""The result spool: durable until acknowledged, re-sent, bounded; a real Agent over the memory hub."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from dagon.agent._spool import ResultSpool
from dagon.protocol import (
    Ack,
    AgentId,
    Heartbeat,
    ResultsStored,
    ResultStatus,
    RunId,
    TaskName,
    TaskRef,
    TaskResult,
    TasksFinished,
    TasksStarted,
    topics,
)
from dagon.protocol.transport import MemoryHub

from ._support import AGENT, COORD, agent_config, assign, codec, running_agent


def result(task: str, attempt: int = 1, run: str = "r1") -> TaskResult:
    return TaskResult(RunId(run), TaskName(task), attempt, ResultStatus.SUCCEEDED, 0, 1.0, 2.0, value={"n": task})


def ref(task: str, attempt: int = 1, run: str = "r1") -> TaskRef:
    return TaskRef(RunId(run), TaskName(task), attempt)


def rows(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as db:
        return [(t, a) for t, a in db.execute("SELECT task, attempt FROM results ORDER BY seq")]


async def test_results_survive_a_reopen_in_order_until_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = ResultSpool(path, agent=AgentId("a"))
    assert await spool.open() == 0
    await spool.put([("c1", result("x")), ("c2", result("y"))])
    await spool.put([("c1", result("z", attempt=2))])
    assert rows(path) == [("x", 1), ("y", 1), ("z", 2)]  # durable as soon as put() returns
    assert spool.done(ref("x")) and not spool.done(ref("x", attempt=2))
    await spool.close()  # a crash is the same for the file: nothing more is written at close

    again = ResultSpool(path, agent=AgentId("a"))
    assert await again.open() == 3
    assert [(e.coordinator, e.result) for e in again.entries()] == [
        ("c1", result("x")),
        ("c2", result("y")),
        ("c1", result("z", attempt=2)),
    ]
    runner = asyncio.create_task(again.prune_loop())
    try:
        assert again.acknowledge([ref("y"), ref("nope")]) == 1
        async with asyncio.timeout(5):
            while rows(path) != [("x", 1), ("z", 2)]:
                await asyncio.sleep(0.01)
        assert again.done(ref("y"))  # remembered: a redelivered assignment is not run again
        assert again.refs() == [ref("x"), ref("z", attempt=2)]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await again.close()


async def test_a_full_spool_refuses_nothing_it_holds_and_recovers(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "s.sqlite", agent=AgentId("a"), max_results=2)
    await spool.open()
    await spool.put([("c", result("a")), ("c", result("b")), ("c", result("c"))])
    assert len(spool) == 3  # over the bound, but nothing was dropped
    full_before = spool.full
    assert full_before
    spool.acknowledge([ref("a"), ref("b")])
    assert not spool.full
    await spool.close()
    assert rows(tmp_path / "s.sqlite") == [("c", 1)]  # the pending deletion was written at close


async def test_telemetry_ring_keeps_the_newest_in_order(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "s.sqlite", agent=AgentId("a"), max_telemetry=3)
    await spool.open()
    for i in range(5):
        await spool.add_telemetry(b"sample-%d" % i)
    assert spool.telemetry_backlog == 3
    head = await spool.telemetry_head(10)
    assert [p for _, p in head] == [b"sample-2", b"sample-3", b"sample-4"]
    await spool.telemetry_sent(head[1][0])
    assert spool.telemetry_backlog == 1
    await spool.close()
    again = ResultSpool(tmp_path / "s.sqlite", agent=AgentId("a"), max_telemetry=3)
    await again.open()
    assert [p for _, p in await again.telemetry_head(10)] == [b"sample-4"]
    await again.close()


def test_bad_bounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        ResultSpool(tmp_path / "s", agent=AgentId("a"), max_results=0)


async def test_agent_spools_each_result_before_sending_and_drops_it_when_stored(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, heartbeat_interval=0.05) as (agent, coord), hub.transport() as observer:
        await observer.subscribe(topics.agent_telemetry(AGENT))
        await coord.assign(assign("one", "echo 1 > out.txt"), assign("two", "sleep 0.3"))
        first = await coord.next(TasksFinished)
        # Sent, hence already durable: the row is in the file.
        assert {(r.task, 1) for r in first.results} <= set(rows(agent.spool.path))
        assert agent.spool.done(ref(first.results[0].task))
        results = {str(r.task): r for r in first.results}
        if len(results) < 2:
            results.update({str(r.task): r for r in (await coord.next(TasksFinished)).results})
        # Heartbeats list what the agent holds: the results nobody acknowledged yet.
        async with asyncio.timeout(5):
            while True:
                beat = codec.decode((await anext(observer.messages())).payload).message
                if isinstance(beat, Heartbeat) and set(beat.held) == {ref("one"), ref("two")}:
                    assert beat.complete
                    break
        await coord.raw(topics.agent_tasks(AGENT), codec.encode(ResultsStored(tasks=(ref("one"), ref("two")))))
        async with asyncio.timeout(5):
            while len(agent.spool) or rows(agent.spool.path):
                await asyncio.sleep(0.01)
        # A redelivered assignment of an attempt that already ran does not run again.
        await coord.assign(assign("one", "echo again >> out.txt"))
        await asyncio.sleep(0.3)
        assert agent.completed == 2
        assert (Path(results["one"].workdir) / "out.txt").read_text() == "1\n"


async def test_unacknowledged_results_are_resent_and_a_redelivered_attempt_is_not_rerun(
    hub: MemoryHub, tmp_path: Path
) -> None:
    async with running_agent(hub, tmp_path, spool_resend_after=0.3) as (agent, coord):
        await coord.assign(assign("job", "echo x >> count.txt"))
        first = await coord.next(TasksFinished)
        second = await coord.next(TasksFinished, within=5)  # nobody acknowledged: sent again
        assert first.results == second.results
        await coord.assign(assign("job", "echo x >> count.txt"))  # QoS 1 redelivery of the assignment
        third = await coord.next(TasksFinished, within=2)  # answered with the result, at once
        assert third.results == first.results
        assert (Path(first.results[0].workdir) / "count.txt").read_text() == "x\n"
        assert agent.completed == 1
        await coord.raw(topics.agent_tasks(AGENT), codec.encode(ResultsStored(tasks=(ref("job"),))))
        async with asyncio.timeout(5):
            while len(agent.spool):
                await asyncio.sleep(0.01)


async def test_a_restarted_agent_sends_what_its_previous_process_spooled(hub: MemoryHub, tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    previous = ResultSpool(config.spool_file, agent=AgentId(AGENT))
    await previous.open()
    await previous.put([(COORD, result("before-the-crash"))])
    await previous.close()
    async with running_agent(hub, tmp_path) as (agent, coord):
        finished = await coord.next(TasksFinished)
        assert finished.results == (result("before-the-crash"),)
        assert agent.held() == [ref("before-the-crash")]
        await coord.raw(topics.agent_tasks(AGENT), codec.encode(ResultsStored(tasks=(ref("before-the-crash"),))))
        async with asyncio.timeout(5):
            while rows(config.spool_file):
                await asyncio.sleep(0.01)
        # It never ran here in this process, and it is not run again if assigned again.
        await coord.assign(assign("before-the-crash", "true"))
        await asyncio.sleep(0.2)
        assert agent.completed == 0
        assert not any(isinstance(m, TasksStarted) for m in coord.seen)


async def test_a_full_spool_refuses_new_tasks(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=2, spool_max_results=1) as (agent, coord):
        await coord.assign(assign("first", "true"))
        await coord.next(TasksFinished)
        await coord.assign(assign("second", "true"))
        ack = await coord.next(Ack)
        assert ack.accepted == 0
        assert "spool is full" in ack.rejected[0].reason
        assert agent.completed == 1


def test_durability_settings_are_checked_and_the_spool_lives_in_the_home(tmp_path: Path) -> None:
    from dagon.agent import AgentConfig, load_agent_config
    from dagon.protocol import ConfigError

    def load(**env: str) -> AgentConfig:
        return load_agent_config(config_file=None, env={"DAGON_HOME": str(tmp_path), **env}, flags={"id": "edge-1"})

    config = load(DAGON_MQTT_WILL_DELAY="60")
    assert config.spool_file == tmp_path / "spool-edge-1.sqlite"
    assert (config.mqtt_session_expiry, config.mqtt_will_delay) == (3600, 60)
    assert load(DAGON_SPOOL=str(tmp_path / "x.db")).spool_file == tmp_path / "x.db"
    with pytest.raises(ConfigError, match="cannot exceed mqtt_session_expiry"):
        load(DAGON_MQTT_SESSION_EXPIRY="10", DAGON_MQTT_WILL_DELAY="60")
    with pytest.raises(ConfigError, match="mqtt_max_backoff"):
        load(DAGON_MQTT_MAX_BACKOFF="0")
