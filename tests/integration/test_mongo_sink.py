"""The MongoDB sink against a real nx-27017 process (MongoDB wire protocol; an emulation, not mongod).

A real coordinator and a real agent (in-memory hub, real codec and signatures, real
processes) run workflows; the sink writes through pymongo's AsyncMongoClient over TCP;
the test reads back with its own client. Outages are real: the server is never started,
or is SIGKILLed mid-run and started again on the same port and database file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _keys import coordinator_security
from _mongo import NxMongo
from pymongo import AsyncMongoClient

from dagon.agent import Agent
from dagon.core import Coordinator, MongoSink, RunState, RunStore, TaskState
from dagon.core._metrics import CoordinatorMetrics
from dagon.protocol import AgentId, Telemetry
from dagon.protocol.transport import MemoryHub

from ._stack import hub_agent, taskflow

pytestmark = pytest.mark.mongo


@pytest.fixture
def nx(tmp_path: Path) -> Iterator[NxMongo]:
    server = NxMongo(tmp_path / "nx", db=str(tmp_path / "nx" / "dagon.db"))
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def stack(hub: MemoryHub, tmp: Path, sink: MongoSink) -> AsyncIterator[tuple[Coordinator, Agent]]:
    store = RunStore(tmp / "runs.sqlite")
    try:
        coordinator = Coordinator(
            connect=lambda will: hub.transport(will=will), coordinator_id="test", store=store, **coordinator_security()
        )
        coordinator.add_listener(sink)
        agent = hub_agent(hub, tmp, "agent0", telemetry_interval=0.2, power_source="model")
        async with sink, coordinator, agent:
            await coordinator.wait_for_agents(1)
            yield coordinator, agent
    finally:
        store.close()


@contextlib.asynccontextmanager
async def reader(url: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        yield client
    finally:
        await client.close()


async def wait_samples(coordinator: Coordinator, count: int) -> None:
    async with asyncio.timeout(20):
        while coordinator.telemetry.samples < count:
            await asyncio.sleep(0.05)


async def test_runs_tasks_and_telemetry_documents_with_indexes(hub: MemoryHub, tmp_path: Path, nx: NxMongo) -> None:
    nx.start()
    sink = MongoSink(nx.url, database="dagon_test", flush_interval=0.1)
    metrics = CoordinatorMetrics()
    metrics.watch_sink(sink)
    async with stack(hub, tmp_path, sink) as (coordinator, _agent):
        metrics.bind(coordinator)
        await wait_samples(coordinator, 2)  # the model power source needs a sample to attribute energy
        run = await coordinator.submit(taskflow())
        result = await coordinator.wait(run)
        assert result.state is RunState.SUCCEEDED, result.cause
        await wait_samples(coordinator, coordinator.telemetry.samples + 2)
        async with asyncio.timeout(20):
            await sink.flushed()
        samples = coordinator.telemetry.samples
        views = coordinator.engine.runs[run].tasks
        energies = {name: v.result.energy_joules for name, v in views.items() if v.result is not None}
        get = metrics.registry.get_sample_value
        assert get("dagon_mongo_written_documents_total") == sink.stats().written > 0
        assert get("dagon_mongo_buffered_documents") == 0
        assert get("dagon_mongo_up") == 1
        assert get("dagon_mongo_dropped_documents_total") == 0
        cpu = get("dagon_agent_cpu_percent", {"agent": "agent0"})
        assert cpu is not None and 0 <= cpu <= 100
        watts = get("dagon_agent_power_watts", {"agent": "agent0", "source": "model", "measured": "false"})
        assert watts is not None and watts > 0

    async with reader(nx.url) as client:
        db = client["dagon_test"]
        runs = await db.runs.find({"run_id": run}).to_list()
        assert len(runs) == 1
        doc = runs[0]
        assert doc["_id"] == run and doc["state"] == "succeeded" and doc["workflow"] == "taskflow"
        assert doc["tasks"] == 5 and doc["counts"] == {"succeeded": 5}
        assert doc["finished_at"] >= doc["started_at"] > 0
        assert doc["started_at"] == pytest.approx(doc["submitted_at"], abs=1.0)
        assert doc["energy_joules"] == pytest.approx(sum(energies.values()))
        assert doc["energy_joules"] > 0

        tasks = await db.tasks.find({"run_id": run}).sort("task", 1).to_list()
        assert [t["task"] for t in tasks] == ["A", "B", "C", "D", "E"]  # one document per attempt
        for t in tasks:
            assert t["_id"] == f"{run}:{t['task']}:1" and t["attempt"] == 1
            assert t["state"] == "succeeded" and t["status"] == "succeeded" and t["exit_code"] == 0
            assert t["agent"] == "agent0" and t["runtime"] == "process" and t["workflow"] == "taskflow"
            # nx-27017 keeps 15 significant digits of a double set through $set (SQLite's JSON functions
            # do); mongod keeps all 17, so epoch seconds read back here are exact to ~10 µs only
            assert t["duration"] == pytest.approx(t["finished_at"] - t["started_at"], abs=1e-4)
            assert t["duration"] > 0
            assert t["energy_joules"] == pytest.approx(energies[t["task"]]) and t["energy_joules"] > 0
            # (nx-27017 hands booleans set through $set back as 0/1; mongod keeps them booleans)
            assert t["energy_measured"] in (False, 0) and t["energy_source"] == "model"
            assert t["dispatched_at"] <= t["running_at"] <= t["succeeded_at"]

        telemetry = await db.telemetry.find({"agent": "agent0"}).sort("ts", 1).to_list()
        assert len(telemetry) == samples >= 4
        assert [d["ts"] for d in telemetry] == sorted({d["ts"] for d in telemetry})  # no duplicates
        last = telemetry[-1]
        assert 0 <= last["cpu_percent"] <= 100 and 0 < last["memory_used"] <= last["memory_total"]
        assert last["power"]["source"] == "model" and last["power"]["measured"] in (False, 0)
        assert last["power"]["watts"] > 0 and last["energy_joules_total"] > 0

        keys = {}
        for name in ("runs", "tasks", "telemetry"):
            info = await db[name].index_information()
            keys[name] = {tuple(k for k, _ in spec["key"]): bool(spec.get("unique")) for spec in info.values()}
        assert keys["runs"][("run_id",)] is True
        assert ("run_id", "task", "attempt") in keys["tasks"]
        assert ("agent", "ts") in keys["telemetry"]


async def test_outage_buffers_then_delivers_in_order_without_duplicates(
    hub: MemoryHub, tmp_path: Path, nx: NxMongo, caplog: pytest.LogCaptureFixture
) -> None:
    """MongoDB is up, then SIGKILLed: a whole run completes meanwhile; started again on the same
    port and file, the buffered documents arrive, nothing twice, the first run's documents intact."""
    caplog.set_level(logging.WARNING, logger="dagon.core._mongo")
    nx.start()
    sink = MongoSink(nx.url, database="dagon_test", flush_interval=0.1, server_timeout=0.5, max_backoff=1.0)
    async with stack(hub, tmp_path, sink) as (coordinator, _agent):
        first = await coordinator.submit(taskflow())
        assert (await coordinator.wait(first)).state is RunState.SUCCEEDED
        async with asyncio.timeout(20):
            await sink.flushed()
        before = sink.stats().written

        async with asyncio.timeout(60):  # the coordinator never waits for MongoDB
            second = await coordinator.submit(taskflow(extra=3))
            tasks = coordinator.engine.runs[second].tasks
            while tasks["A"].state is not TaskState.SUCCEEDED:  # mid-run: A done, B, C and extras to come
                await asyncio.sleep(0.01)
            nx.kill()
            killed_at = sink.stats().written
            result = await coordinator.wait(second)
        assert result.state is RunState.SUCCEEDED, result.cause
        await wait_samples(coordinator, coordinator.telemetry.samples + 3)
        async with asyncio.timeout(20):
            while sink.stats().failures < 2:
                await asyncio.sleep(0.05)
        down = sink.stats()
        assert down.up is False and down.written == killed_at >= before and down.dropped == 0
        assert down.buffered >= 1 + 7  # the run and at least the 7 tasks after A, plus telemetry
        assert "Connection refused" in down.last_error or "connect" in down.last_error.lower()
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1  # logged once, not per retry
        assert "document(s) buffered" in unreachable[0].getMessage()

        nx.start()
        async with asyncio.timeout(30):
            await sink.flushed()
        assert sink.stats().up is True and sink.stats().dropped == 0
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        samples = coordinator.telemetry.samples

    async with reader(nx.url) as client:
        db = client["dagon_test"]
        runs = {d["_id"]: d async for d in db.runs.find()}
        assert runs[first]["state"] == "succeeded" and runs[second]["state"] == "succeeded"
        assert runs[second]["counts"] == {"succeeded": 8}
        assert await db.tasks.count_documents({"run_id": first}) == 5
        second_tasks = await db.tasks.find({"run_id": second}).to_list()
        assert len(second_tasks) == 8 and len({t["_id"] for t in second_tasks}) == 8
        assert all(t["state"] == "succeeded" and t["exit_code"] == 0 for t in second_tasks)
        # every transition of an attempt arrived, merged into its one document
        assert all(t["dispatched_at"] <= t["running_at"] <= t["succeeded_at"] for t in second_tasks)
        stamps = [d["ts"] async for d in db.telemetry.find({"agent": "agent0"})]
        assert len(stamps) == len(set(stamps)) >= samples - 2  # samples after the last flush may be unwritten


async def test_start_while_down_and_full_buffer_drops_oldest_telemetry_first(
    tmp_path: Path, nx: NxMongo, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens when the sink starts: it does not fail, buffers up to its bound (evicting the
    oldest telemetry first), and delivers the newest documents once the server appears."""
    caplog.set_level(logging.WARNING, logger="dagon.core._mongo")
    sink = MongoSink(
        nx.url, database="dagon_test", batch_size=5, max_buffer=10, flush_interval=0.05, server_timeout=0.3,
        max_backoff=0.5,
    )  # fmt: skip
    async with sink:
        for i in range(25):
            sink.agent_telemetry(Telemetry(agent=AgentId("edge-1"), sampled_at=1000.0 + i, cpu_percent=10.0 + i,
                                           memory_used=1, memory_total=2))  # fmt: skip
        stats = sink.stats()
        assert stats.buffered == 10 and stats.dropped == 15
        async with asyncio.timeout(10):
            while sink.stats().failures < 1:
                await asyncio.sleep(0.05)
        indexed_while_down = sink.indexed
        assert indexed_while_down is False
        assert sum("buffer full" in r.getMessage() for r in caplog.records) == 1
        nx.start()
        async with asyncio.timeout(30):
            await sink.flushed()
        assert sink.indexed is True and sink.stats().written == 10
    async with reader(nx.url) as client:
        docs = await client["dagon_test"].telemetry.find().sort("ts", 1).to_list()
    assert [d["ts"] for d in docs] == [1000.0 + i for i in range(15, 25)]
    assert [d["cpu_percent"] for d in docs] == [10.0 + i for i in range(15, 25)]


async def test_a_refused_document_is_dropped_and_the_rest_of_its_batch_still_arrives(
    tmp_path: Path, nx: NxMongo, caplog: pytest.LogCaptureFixture
) -> None:
    """A document the server refuses (here: it breaks the unique index on runs.run_id that another
    writer's document already holds) must not block the documents queued behind it forever."""
    nx.start()
    async with reader(nx.url) as client:
        runs = client["dagon_test"].runs
        await runs.create_index("run_id", unique=True, name="run_id")
        await runs.insert_one({"_id": "someone-else", "run_id": "r2"})
    sink = MongoSink(nx.url, database="dagon_test", flush_interval=0.05)
    async with sink:
        for i in range(1, 5):
            sink._put("runs", f"r{i}", {"run_id": f"r{i}", "state": "succeeded"})
        async with asyncio.timeout(20):
            await sink.flushed()
        stats = sink.stats()
    assert stats.dropped == 1 and stats.written == 3 and stats.buffered == 0
    assert any("refused runs document 'r2'" in r.getMessage() for r in caplog.records)
    async with reader(nx.url) as client:
        ids = sorted([d["_id"] async for d in client["dagon_test"].runs.find()])
    assert ids == ["r1", "r3", "r4", "someone-else"]
