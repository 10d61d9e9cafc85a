"""Tier 3: the whole system against a real Mosquitto, agents as real processes."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import MOSQUITTO_MISSING, Mosquitto, missing, mosquitto_binary, stop_process
from _keys import COORDINATOR, coordinator_security

import dagon
from dagon.core import RunState, TaskState
from dagon.protocol import SCHEMA_RUN_STATUS, SCHEMA_TASK_RESULT, decode_public, topics
from dagon.protocol.transport import MqttTransport

from ._stack import start_agent, taskflow

pytestmark = pytest.mark.mosquitto


stop = stop_process


@pytest.fixture
def agents(mosquitto: Any, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_agent(mosquitto.url, tmp_path, f"agent{i}") for i in range(2)]
    try:
        yield procs
    finally:
        for proc in procs:
            stop(proc)


async def test_demo_on_two_agent_processes_with_public_results(
    mosquitto: Any, agents: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
        assert client.coordinator is not None
        async with asyncio.timeout(20):
            await client.coordinator.wait_for_agents(2)
        run = await client.submit(taskflow(extra=8))
        seen = [event async for event in run.events()]
        result = await run.wait()
    assert result.ok, result.cause
    result_txt = (Path(result["E"].workdir) / "result.txt").read_text()
    assert result_txt == "B\nfrom-A\nC\nfrom-A\n"
    assert {t.agent for t in result.tasks.values()} == {"agent0", "agent1"}
    assert any(e.task == "E" and e.state == "succeeded" for e in seen)
    assert seen[-1].task is None and seen[-1].state == "succeeded"

    # Retained public JSON is readable by any MQTT client afterwards.
    async with MqttTransport(mosquitto.url, client_id="test-reader") as reader:
        await reader.subscribe(topics.run_status(run.id), topics.run_task_result(run.id, "E"))
        docs: dict[str, Any] = {}
        messages = reader.messages()
        async with asyncio.timeout(5):
            while len(docs) < 2:
                msg = await anext(messages)
                docs[msg.topic] = decode_public(msg.payload)
    status = docs[topics.run_status(run.id)]
    assert status["schema"] == SCHEMA_RUN_STATUS
    assert status["state"] == "succeeded"
    assert status["counts"] == {"succeeded": 13}
    e_doc = docs[topics.run_task_result(run.id, "E")]
    assert e_doc["schema"] == SCHEMA_TASK_RESULT
    assert e_doc["exit_code"] == 0
    assert e_doc["outputs"][0]["path"] == "result.txt"


async def test_killed_agent_is_detected_and_its_task_requeued(mosquitto: Any, tmp_path: Path) -> None:
    victim = start_agent(mosquitto.url, tmp_path, "victim", slots=4)
    survivor: subprocess.Popen[bytes] | None = None
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client", requeue_grace=2) as client:
            coordinator = client.coordinator
            assert coordinator is not None
            async with asyncio.timeout(20):
                await coordinator.wait_for_agents(1)
            wf = dagon.Workflow("requeue")
            # Each task appends its attempt number to its own marker: one line per execution.
            for name in ("slow0", "slow1"):
                wf.shell(name, f"echo $DAGON_ATTEMPT >> {markers / name}; sleep 1.5; echo done > out.txt")
            for i in range(3):
                wf.shell(f"quick{i}", f"echo $DAGON_ATTEMPT >> {markers / f'quick{i}'}")
            run = await client.submit(wf)
            async with asyncio.timeout(10):
                # Kill when the quick tasks are recorded done and both slow ones run.
                while not (
                    all((markers / f"slow{i}").exists() for i in range(2))
                    and all(t.state is TaskState.SUCCEEDED for n, t in coordinator.engine.run(run.id).tasks.items()
                            if n.startswith("quick"))
                ):  # fmt: skip
                    await asyncio.sleep(0.05)
            victim.send_signal(signal.SIGKILL)  # no clean shutdown: only the Last Will tells
            victim.wait()
            survivor = start_agent(mosquitto.url, tmp_path, "survivor", slots=2)
            result = await run.wait()
            # Every result was acknowledged: nothing stays in the survivor's spool.
            spool = tmp_path / "survivor" / "spool-survivor.sqlite"
            async with asyncio.timeout(10):
                while _spooled(spool):
                    await asyncio.sleep(0.05)
    finally:
        stop(victim)
        if survivor is not None:
            stop(survivor)
    assert result.ok, result.cause
    for name in ("slow0", "slow1"):
        assert (result[name].agent, result[name].attempt) == ("survivor", 2)
        # The killed attempt 1 (accounted for) and the successful attempt 2, each once.
        assert (markers / name).read_text().split() == ["1", "2"]
    for i in range(3):
        assert result[f"quick{i}"].agent == "victim"
        assert (markers / f"quick{i}").read_text().split() == ["1"]  # done before the kill: never again


def _spooled(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])


async def test_failing_task_over_mosquitto(
    mosquitto: Any, agents: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    wf = dagon.Workflow("fails")
    wf.shell("bad", "echo nope >&2; exit 7")
    wf.shell("dependent", "true", after=["bad"])
    async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
        result = await (await client.submit(wf)).wait()
    assert result.state is RunState.FAILED
    assert result["bad"].exit_code == 7
    assert "nope" in result["bad"].stderr_tail
    assert result["dependent"].state is TaskState.UPSTREAM_FAILED


async def test_garbage_on_every_topic_over_mosquitto(
    mosquitto: Any, agents: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
        coordinator = client.coordinator
        assert coordinator is not None
        async with asyncio.timeout(20):
            await coordinator.wait_for_agents(2)
        async with MqttTransport(mosquitto.url, client_id="intruder") as intruder:
            for topic in (
                topics.agent_tasks("agent0"),
                topics.agent_control("agent1"),
                topics.agent_telemetry("agent0"),
                topics.agent_status("agent1"),
                topics.coordinator_inbox(coordinator.id),
            ):
                for payload in (b"\xc1garbage", b"\x81\xa1v\x63", b'{"op": "assign"}'):
                    await intruder.publish(topic, payload)
        await asyncio.sleep(0.5)
        assert sum(coordinator.rejections.values()) >= 9
        result = await (await client.submit(taskflow(extra=8))).wait()
    assert result.ok, result.cause
    assert all(proc.poll() is None for proc in agents), "an agent died on malformed input"


@pytest.mark.parametrize("persistence", [False, True], ids=["in-memory", "persistent"])
async def test_run_survives_a_broker_restart(tmp_path: Path, persistence: bool) -> None:
    binary = mosquitto_binary()
    if binary is None:
        missing(MOSQUITTO_MISSING)
    mosquitto = Mosquitto(binary=binary, workdir=tmp_path / "mosquitto", persistence=persistence)
    mosquitto.start()
    agent = start_agent(mosquitto.url, tmp_path, "steady", slots=2)
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        # A stopping Mosquitto publishes every client's Last Will: the agent looks lost. The
        # requeue grace lets its attempts wait for it to come back instead of running again.
        async with dagon.connect(mosquitto.url, home=tmp_path / "client", requeue_grace=20) as client:
            assert client.coordinator is not None
            async with asyncio.timeout(20):
                await client.coordinator.wait_for_agents(1)
            wf = dagon.Workflow("restart")
            for i in range(8):
                wf.shell(f"t{i}", f"echo $DAGON_ATTEMPT >> {markers / f't{i}'}; sleep 0.5; echo done > out.txt")
            run = await client.submit(wf)
            await asyncio.sleep(0.8)
            # Without persistence it loses retained messages and sessions; with it, it keeps them.
            await asyncio.to_thread(mosquitto.restart)
            async with asyncio.timeout(60):
                result = await run.wait()
    finally:
        stop(agent)
        mosquitto.stop()
    assert result.ok, {n: t.cause for n, t in result.tasks.items()}
    assert agent.returncode == 0  # the agent rode out the restart and shut down cleanly
    for i in range(8):
        # No task's effect happened twice: one execution, the attempt the run recorded.
        assert (markers / f"t{i}").read_text().split() == [str(result[f"t{i}"].attempt)]


async def test_remote_submission_of_an_invalid_workflow_is_rejected_with_the_reason(
    mosquitto: Any, tmp_path: Path
) -> None:
    from dagon.core import Coordinator, RunStore
    from dagon.protocol import Codec, SubmitRun, decode_public

    store = RunStore(tmp_path / "runs.sqlite")
    coordinator = Coordinator(
        connect=lambda will: MqttTransport(mosquitto.url, client_id="standalone", will=will),
        coordinator_id="main",
        store=store,
        **coordinator_security(),
    )
    try:
        async with coordinator, MqttTransport(mosquitto.url, client_id="client") as client:
            await client.subscribe(topics.run_status("bad-run"))
            spec = {"version": 1, "name": "w", "tasks": [{"name": "a", "command": "cat workflow:///ghost/x"}]}
            signed = Codec(sender="client", signer=COORDINATOR)
            payload = signed.encode(SubmitRun(run="bad-run", workflow=spec))  # type: ignore[arg-type]
            await client.publish(topics.coordinator_inbox("main"), payload)
            async with asyncio.timeout(5):
                msg = await anext(client.messages())
            doc = decode_public(msg.payload)
            assert doc["state"] == "rejected"
            assert "ghost" in doc["cause"]
            assert coordinator.engine.runs == {}
    finally:
        store.close()
