"""Agent-side durability against real faults: real ``dagon-agent`` processes, real Mosquitto,
real SIGKILL, a real TCP connection cut (see ``_proxy.py``).

Each task appends its attempt number to a marker file of its own, so a test counts how
often each task's effect happened.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

import dagon
from dagon._keys import coordinator_signer
from dagon.core import RunEvent
from dagon.protocol import Codec, ResultsStored, TaskRef, TasksFinished, decode_public, topics
from dagon.protocol.transport import MqttTransport

from ._proxy import CuttableProxy
from ._stack import start_agent

pytestmark = pytest.mark.mosquitto


def spool_rows(home: Path, agent: str) -> list[tuple[str, str, int]]:
    """What the agent's spool file holds (another process may have it open: WAL allows that)."""
    path = home / f"spool-{agent}.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return [(r, t, a) for r, t, a in db.execute("SELECT run, task, attempt FROM results ORDER BY seq")]


async def wait_until(check: Any, *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_agent_cut_off_for_30_s_delivers_its_result_once(mosquitto: Any, tmp_path: Path) -> None:
    marker = tmp_path / "job.marker"
    received: list[TaskRef] = []
    events: list[RunEvent] = []
    # The broker keeps the agent's session and holds its Last Will for 60 s; the coordinator
    # waits 60 s for heartbeats: a 30 s cut loses nothing and requeues nothing.
    env = {"DAGON_MQTT_WILL_DELAY": "60", "DAGON_MQTT_MAX_BACKOFF": "2", "DAGON_TELEMETRY_INTERVAL": "1"}
    samples: list[tuple[float, float]] = []  # (sampled at, received at) of the agent's telemetry
    async with CuttableProxy(mosquitto.port) as proxy:
        agent = start_agent(proxy.url, tmp_path, "remote", slots=1, env=env)
        try:
            async with (
                dagon.connect(mosquitto.url, home=tmp_path / "client", heartbeat_ttl=60) as client,
                MqttTransport(mosquitto.url, client_id="inbox-sniffer") as sniffer,
            ):
                coordinator = client.coordinator
                assert coordinator is not None
                await sniffer.subscribe(topics.coordinator_inbox(coordinator.id), topics.agent_telemetry_json("remote"))
                sniffed = sniffer.messages()
                plain = Codec(sender="sniffer")

                async def sniff() -> None:
                    while True:
                        msg = await anext(sniffed)
                        if msg.topic == topics.agent_telemetry_json("remote"):
                            samples.append((decode_public(msg.payload)["ts"], time.time()))
                            continue
                        message = plain.decode(msg.payload).message
                        if isinstance(message, TasksFinished):
                            received.extend(TaskRef(r.run, r.task, r.attempt) for r in message.results)

                async with asyncio.timeout(20):
                    await coordinator.wait_for_agents(1)
                wf = dagon.Workflow("cut")
                wf.shell("job", f"echo $DAGON_ATTEMPT >> {marker}; sleep 4; echo done > out.txt")
                run = await client.submit(wf)

                async def collect() -> None:
                    events.extend([e async for e in run.events()])

                async with asyncio.TaskGroup() as tg:
                    sniffing = tg.create_task(sniff())
                    tg.create_task(collect())
                    await wait_until(marker.exists, within=20, what="the task to start")
                    proxy.cut()
                    cut_at = time.time()
                    await asyncio.sleep(30)  # the task finishes (after 4 s) while the agent is cut off
                    assert not received, "a result got through the cut"
                    assert lines(marker) == ["1"]
                    proxy.restore()
                    restored = time.time()
                    async with asyncio.timeout(60):
                        result = await run.wait()
                    await wait_until(lambda: not spool_rows(tmp_path / "remote", "remote"), within=20,
                                     what="the acknowledgement to empty the spool")  # fmt: skip
                    await wait_until(
                        lambda: samples and samples[-1][0] > restored, within=10, what="telemetry after the reconnect"
                    )
                    sniffing.cancel()
        finally:
            await asyncio.to_thread(stop_process, agent)  # the proxy runs on this event loop
    assert result.ok, result.cause
    job = result["job"]
    assert (job.agent, job.attempt) == ("remote", 1)  # no requeue
    assert (Path(job.workdir) / "out.txt").stat().st_mtime < restored  # it finished during the cut
    assert lines(marker) == ["1"]  # ran once
    assert proxy.refused > 0  # the agent really tried to reconnect through the cut
    assert received and set(received) == {TaskRef(run.id, "job", 1)}  # type: ignore[arg-type]
    succeeded = [e for e in events if e.task == "job" and e.state == "succeeded"]
    assert [e.attempt for e in succeeded] == [1]  # used once
    assert succeeded[0].at >= restored  # its result came after the reconnect
    # Telemetry sampled during the cut was kept and delivered after it, all in order.
    during = [(ts, got) for ts, got in samples if cut_at + 1 < ts < restored - 1]
    assert len(during) >= 5, samples
    assert all(got >= restored for _, got in during)
    assert [ts for ts, _ in samples] == sorted(ts for ts, _ in samples)


async def test_agent_killed_before_the_ack_resends_its_spooled_result_after_restart(
    mosquitto: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "job.marker"
    home = tmp_path / "phoenix"
    agent = start_agent(mosquitto.url, tmp_path, "phoenix", slots=1)
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
            assert client.coordinator is not None
            async with asyncio.timeout(20):
                await client.coordinator.wait_for_agents(1)
            coordinator_id = client.coordinator.id
            wf = dagon.Workflow("spooled")
            wf.shell("job", f"echo $DAGON_ATTEMPT >> {marker}; sleep 2; echo done > out.txt")
            run = await client.submit(wf)
            await wait_until(marker.exists, within=20, what="the task to start")
        # The coordinator is gone: the result the agent sends now is acknowledged by nobody.
        await wait_until(lambda: spool_rows(home, "phoenix"), within=20, what="the result in the spool")
        assert spool_rows(home, "phoenix") == [(run.id, "job", 1)]
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        async with MqttTransport(mosquitto.url, client_id="stand-in-coordinator") as stand_in:
            await stand_in.subscribe(topics.coordinator_inbox(coordinator_id))
            agent = start_agent(mosquitto.url, tmp_path, "phoenix", slots=1)  # same id, same state
            plain = Codec(sender="stand-in")
            inbox = stand_in.messages()
            async with asyncio.timeout(30):
                while True:
                    message = plain.decode((await anext(inbox)).payload).message
                    if isinstance(message, TasksFinished):
                        break
            (resent,) = message.results
            assert (resent.run, resent.task, resent.attempt) == (run.id, "job", 1)
            # Acknowledge it as the coordinator would, signed with the key the agent obeys.
            codec = Codec(sender="stand-in", signer=coordinator_signer(tmp_path / "client"))
            stored = ResultsStored(tasks=(TaskRef(run.id, "job", 1),))  # type: ignore[arg-type]
            await stand_in.publish(topics.agent_tasks("phoenix"), codec.encode(stored, to="agent/phoenix"))
            await wait_until(lambda: not spool_rows(home, "phoenix"), within=10, what="the acknowledged row to go")
    finally:
        stop_process(agent)
    assert lines(marker) == ["1"]  # the restart re-sent the result; it did not run the task again
    assert agent.returncode == 0
