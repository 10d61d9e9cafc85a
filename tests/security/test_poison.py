"""Issue 15, attacks 1 and 8: one small message must not end a coordinator, an agent or a client,
and a huge one must cost nothing before it is refused. Real processes, real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time

import msgpack
import pytest

from dagon._keys import agent_signer
from dagon.protocol import Signer, topics
from dagon.protocol.transport import MqttTransport

from ._deploy import Deployment, run_finished, task_results

pytestmark = pytest.mark.mosquitto

STRANGER = Signer.generate()


def poison(depth: int = 1020) -> bytes:
    """Issue 15's 1.1 KB message: shaped like a signed frame, its body nesting ``depth`` lists."""
    body = b"\x91" * depth + b"\xc0"
    frame: bytes = msgpack.packb([STRANGER.key_id, STRANGER.sign(body), body])
    return frame


def signed_deep(signer: Signer, agent: str, depth: int) -> bytes:
    """Deep nesting inside a correctly signed envelope, in a free-form field the decoder reaches
    only once the signature verified (what a stolen or compromised agent key could send)."""
    hole = "\0hole\0"
    head = {"v": 1, "op": "control", "id": "d" * 16, "ts": time.time(), "src": f"agent/{agent}",
            "action": "announce", "args": {"x": hole}}  # fmt: skip
    body = msgpack.packb(head).replace(msgpack.packb(hole), b"\x91" * depth + b"\xc0")
    frame: bytes = msgpack.packb([signer.key_id, signer.sign(body), body])
    return frame


async def test_a_retained_poison_message_ends_no_coordinator_agent_or_client(deployment: Deployment) -> None:
    async with MqttTransport(deployment.url, client_id="intruder") as intruder:
        for name, payload in (("poison", poison()), ("poison2", poison(5000)), ("poison3", b"\x91" * 3000 + b"\xc0")):
            await intruder.publish(topics.agent_status(name), payload, retain=True)
        await intruder.publish(topics.agent_telemetry("poison"), poison())
        # the public topics clients read: deep JSON, wrong shapes
        deep_json = b"[" * 100_000 + b"]" * 100_000
        await intruder.publish(topics.coordinator_status("fake"), deep_json, retain=True)
    deployment.start_coordinator()
    deployment.start_agent("edge")
    wf = deployment.workflow("after-poison", [("A", "echo ok > a.txt", {}), ("B", "cat workflow:///A/a.txt", {})])
    run, out = deployment.submit(wf)  # `dagon submit --wait` reads the poisoned coordinator statuses too
    assert out.returncode == 0, out.stderr + deployment.logs()
    ran = deployment.dagon("run", str(wf), "--broker", deployment.url)  # issue 15: exited 1 at every start
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert {doc["state"] for doc in (await task_results(deployment.url, run)).values()} == {"succeeded"}
    listing = deployment.dagon("agents", "--json", "--all", "--broker", deployment.url)
    assert listing.returncode == 0, listing.stderr
    assert "edge" in {row["id"] for row in json.loads(listing.stdout)}
    async with MqttTransport(deployment.url, client_id="intruder2") as intruder:  # while running, too
        await intruder.publish(topics.agent_status("poison4"), poison(), retain=True)
        await intruder.publish(topics.agent_control("edge"), poison())
        await intruder.publish(topics.coordinator_inbox("main"), poison())
        await intruder.publish(topics.run_status(run), deep_json)
        await intruder.publish(topics.run_events(run), b'{"schema": "dagon.events/1", "events": "xyz"}')
        stolen = agent_signer(deployment.agent_home("edge"))
        await intruder.publish(topics.agent_telemetry("edge"), signed_deep(stolen, "edge", 1020))
    await deployment.wait_log(
        f"{topics.agent_control('edge')} (untrusted)", name="edge"
    )  # refused before it was decoded
    await deployment.wait_log("(too_deep)")  # verified, then refused by the bounded decoder
    _, out = deployment.submit(wf)
    assert out.returncode == 0, out.stderr + deployment.logs()
    # `dagon watch` follows a run whose public topics are poisoned while it watches
    slow = deployment.workflow("watched", [("S", "sleep 4", {})])
    watched, out = deployment.submit(slow, wait=False)
    assert out.returncode == 0, out.stderr
    watch = deployment.dagon_background("watch", watched, "--broker", deployment.url, log="watch.log")
    await asyncio.sleep(1.5)
    async with MqttTransport(deployment.url, client_id="intruder3") as intruder:
        for topic in (
            topics.run_status(watched), topics.run_events(watched), topics.run_task_result(watched, "S"),
            topics.agent_telemetry_json("edge"),
        ):  # fmt: skip
            for payload in (deep_json, b"\xff\xfe not utf-8", b'{"schema": 5, "state": []}', b"[]", poison()):
                await intruder.publish(topic, payload)
    assert await asyncio.to_thread(watch.wait, 60) == 0, (deployment.tmp / "watch.log").read_text()
    assert "Traceback" not in (deployment.tmp / "watch.log").read_text()
    assert deployment.alive()
    assert deployment.agents["edge"].poll() is None
    logs = deployment.logs()
    assert "RecursionError" not in logs and "Traceback" not in logs
    assert f"rejected message from {topics.agent_status('poison')}" in logs


async def test_fifteen_megabyte_frames_are_refused_unread_and_nobody_is_requeued(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    wf = deployment.workflow("under-load", [(f"t{i}", "sleep 1; echo done", {}) for i in range(6)])
    huge = msgpack.packb([STRANGER.key_id, b"\0" * 64, b"\x91" * (15 * 2**20)])
    run, out = deployment.submit(deployment.workflow("warm-up", [("w", "true", {})]))
    assert out.returncode == 0, out.stderr
    async with MqttTransport(deployment.url, client_id="intruder") as intruder:
        run, submitted = deployment.submit(wf, wait=False)
        assert submitted.returncode == 0, submitted.stderr
        for _ in range(8):  # ~120 MB in all, on every topic the coordinator and the agent read
            await intruder.publish(topics.agent_status("edge"), huge)
            await intruder.publish(topics.agent_telemetry("edge"), huge)
            await intruder.publish(topics.coordinator_inbox("main"), huge)
            await intruder.publish(topics.agent_control("edge"), huge)
    status = await run_finished(deployment.url, run)
    results = await task_results(deployment.url, run)
    assert {doc["state"] for doc in results.values()} == {"succeeded"}, status
    assert {doc["attempt"] for doc in results.values()} == {1}  # no task requeued: the agent never looked gone
    assert "over the 262144-byte limit" in deployment.logs()  # the status topic's own limit
    assert "lost" not in deployment.logs().lower()
