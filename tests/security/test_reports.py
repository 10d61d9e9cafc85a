"""Issue 15, attack 6: replayed signed reports and tampered retained status do not change what the
coordinator believes about its agents. Real processes, real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import pytest

from dagon.protocol import Codec, Heartbeat, topics
from dagon.protocol.transport import MqttTransport

from ._deploy import Deployment, retained, run_finished, run_status, task_results, until

pytestmark = pytest.mark.mosquitto


@contextlib.asynccontextmanager
async def sniffing(url: str, *filters: str) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Everything published on ``filters`` while the block runs (retained copies included)."""
    seen: list[tuple[str, bytes]] = []
    async with MqttTransport(url, client_id="sniffer") as sniffer:
        await sniffer.subscribe(*filters)

        async def sniff() -> None:
            async for msg in sniffer.messages():
                seen.append((msg.topic, msg.payload))

        task = asyncio.create_task(sniff())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def fast_beats(deployment: Deployment) -> str:
    path = deployment.tmp / "fast-beats.toml"
    path.write_text("heartbeat_interval = 1.0\n")
    return str(path)


def ops(seen: list[tuple[str, bytes]]) -> list[str]:
    plain = Codec(sender="reader")
    out = []
    for _, payload in seen:
        with contextlib.suppress(Exception):
            out.append(plain.decode(payload).message.OP)
    return out


async def test_replayed_offline_and_old_announce_change_nothing(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    deployment.start_agent("other", env={"DAGON_HOST_ID": "another-host"})  # pulls edge's files over HTTP
    async with sniffing(deployment.url, topics.agent_status("edge")) as old:
        await until(lambda: "announce" in ops(old), within=30, what="edge's announce")
        await deployment.wait_log("agent edge online", name="edge")
        deployment.stop_agent("edge")  # a clean shutdown: Offline(shutdown), retained
        await until(lambda: "offline" in ops(old), within=30, what="edge's offline")
    deployment.start_agent("edge")  # a new session, a new data server port
    await deployment.wait_log("agent edge online", name="edge", count=2)
    wf = deployment.workflow(
        "after-replay",
        [("A", "echo payload > f.txt", {"agent": "edge"}), ("B", "cat workflow:///A/f.txt", {"agent": "other"})],
    )
    async with MqttTransport(deployment.url, client_id="intruder") as intruder:
        for _, payload in old:  # the old announce (old data URL), then the old shutdown, retained and not
            await intruder.publish(topics.agent_status("edge"), payload)
            await intruder.publish(topics.agent_status("edge"), payload, retain=True)
    run, out = deployment.submit(wf)
    assert out.returncode == 0, out.stderr + deployment.logs()
    results = await task_results(deployment.url, run)
    assert results["B"]["state"] == "succeeded" and results["B"]["attempt"] == 1, results["B"]


async def test_replayed_heartbeats_do_not_keep_a_dead_agent_online(deployment: Deployment) -> None:
    deployment.start_coordinator("--heartbeat-ttl", "4")
    deployment.start_agent("doomed", "--config", fast_beats(deployment))
    deployment.start_agent("other", "--config", fast_beats(deployment))
    async with sniffing(deployment.url, topics.agent_telemetry("doomed")) as beats:
        await until(lambda: ops(beats).count("heartbeat") >= 3, within=30, what="three heartbeats")
    deployment.agents["doomed"].send_signal(signal.SIGKILL)  # dies without a word
    deployment.agents["doomed"].wait()
    deployment.agents.pop("doomed")
    captured = [p for _, p in beats if _op(p) == "heartbeat"]
    async with MqttTransport(deployment.url, client_id="intruder") as intruder:

        async def replay() -> None:
            while True:
                for payload in captured:
                    await intruder.publish(topics.agent_telemetry("doomed"), payload)
                    await asyncio.sleep(0.2)

        replaying = asyncio.create_task(replay())
        try:
            wf = deployment.workflow("spread", [(f"t{i}", "sleep 0.5", {}) for i in range(8)])
            run, _ = deployment.submit(wf, wait=False)
            status = await run_finished(deployment.url, run)
        finally:
            replaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replaying
    results = await task_results(deployment.url, run)
    assert status["state"] == "succeeded", status
    assert {doc["agent"] for doc in results.values()} == {"other"}  # nothing was placed on the dead agent
    assert {doc["attempt"] for doc in results.values()} == {1}


def _op(payload: bytes) -> str:
    with contextlib.suppress(Exception):
        message = Codec(sender="reader").decode(payload).message
        return "heartbeat" if isinstance(message, Heartbeat) else message.OP
    return ""


async def test_a_restarting_coordinator_finds_an_agent_whose_retained_status_was_cleared(
    deployment: Deployment,
) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge", "--config", fast_beats(deployment))
    await deployment.wait_log("agent edge online", name="edge")
    assert deployment.coordinator is not None
    deployment.coordinator.send_signal(signal.SIGTERM)
    deployment.coordinator.wait()
    async with MqttTransport(deployment.url, client_id="intruder") as intruder:
        await intruder.publish(topics.agent_status("edge"), b"", retain=True)  # hides it from a fresh start
    deployment.start_coordinator()
    run, out = deployment.submit(deployment.workflow("found", [("A", "true", {"agent": "edge"})]))
    assert out.returncode == 0, out.stderr + deployment.logs()
    assert (await task_results(deployment.url, run))["A"]["state"] == "succeeded"


async def test_a_dead_agents_retained_announce_makes_it_online_for_no_new_coordinator(deployment: Deployment) -> None:
    """Issue 15, 9 (and 6): an agent dies without a word while its Last Will waits (a will delay, as
    for flaky links), so its retained announce — seconds old, correctly signed — stays on the
    broker. A coordinator starting then must not schedule on it; the run waits for the real agent."""
    deployment.start_coordinator()
    deployment.start_agent("edge", env={"DAGON_MQTT_WILL_DELAY": "600"})
    await deployment.wait_log("agent edge online")
    assert deployment.coordinator is not None
    deployment.coordinator.send_signal(signal.SIGTERM)
    deployment.coordinator.wait()
    deployment.agents["edge"].send_signal(signal.SIGKILL)
    deployment.agents.pop("edge").wait()
    status = await retained(deployment.url, topics.agent_status("edge"))
    assert _op(status[topics.agent_status("edge")]) == "announce"  # the dead agent's, seconds old
    deployment.start_coordinator()
    await deployment.wait_log("serving on", count=2)
    async with sniffing(deployment.url, topics.agent_tasks("edge")) as sent:
        run, out = deployment.submit(deployment.workflow("waits", [("A", "true", {"agent": "edge"})]), wait=False)
        assert out.returncode == 0, out.stderr
        await asyncio.sleep(4)  # an agent taken for online is assigned its task at once
        assert "assign" not in ops(sent), deployment.logs()
    assert deployment.logs().count("agent edge online") == 1, deployment.logs()  # only the first coordinator's
    state = await run_status(deployment.url, run)
    assert state.get("counts", {}).get("dispatched", 0) == 0, state
    deployment.start_agent("edge")  # the real agent comes back: the run proceeds
    status_doc = await run_finished(deployment.url, run)
    assert status_doc["state"] == "succeeded", status_doc
    assert (await task_results(deployment.url, run))["A"]["attempt"] == 1  # it was never sent to the dead one
