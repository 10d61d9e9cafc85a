"""Issue 15, attack 4: a captured command never runs twice — not after the agent restarts, not
on another agent's topic. Real processes, real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from dagon.protocol import topics
from dagon.protocol.transport import MqttTransport

from ._deploy import Deployment, task_results, until

pytestmark = pytest.mark.mosquitto


async def test_a_captured_assignment_is_refused_after_a_restart_and_on_another_agent(deployment: Deployment) -> None:
    marker = deployment.tmp / "marker.txt"
    deployment.start_coordinator()
    deployment.start_agent("edge")
    deployment.start_agent("other")
    captured: list[bytes] = []
    async with MqttTransport(deployment.url, client_id="sniffer") as sniffer:
        await sniffer.subscribe(topics.agent_tasks("edge"))

        async def sniff() -> None:
            async for msg in sniffer.messages():
                captured.append(msg.payload)

        sniffing = asyncio.create_task(sniff())
        wf = deployment.workflow("once", [("mark", f"echo ran >> {marker}", {"agent": "edge"})])
        run, out = deployment.submit(wf)
        assert out.returncode == 0, out.stderr
        async with asyncio.timeout(10):
            while not captured:
                await asyncio.sleep(0.05)
        sniffing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sniffing
    assert marker.read_text() == "ran\n"
    assign = captured[0]
    # the agent restarts (its in-memory state is gone), then the capture is replayed at once
    deployment.stop_agent("edge")
    deployment.start_agent("edge")
    await deployment.wait_log("agent edge online", name="edge", count=2)
    async with MqttTransport(deployment.url, client_id="intruder") as intruder:
        await intruder.publish(topics.agent_tasks("edge"), assign)
        await deployment.wait_log("(replayed)", name="edge")
        await intruder.publish(topics.agent_tasks("other"), assign)
        await deployment.wait_log("(misdirected)", name="other")
    assert marker.read_text() == "ran\n"  # still once
    assert (await task_results(deployment.url, run))["mark"]["state"] == "succeeded"


async def test_a_captured_resume_is_refused_after_the_coordinator_restarted(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    marker = deployment.tmp / "resumed.txt"
    wf = deployment.workflow("flaky", [("F", f"echo try >> {marker}; exit 1", {})])
    run, _ = deployment.submit(wf)
    assert marker.read_text() == "try\n"
    captured: list[bytes] = []
    async with MqttTransport(deployment.url, client_id="sniffer") as sniffer:
        await sniffer.subscribe(topics.coordinator_inbox("main"))
        messages = sniffer.messages()
        resumed = deployment.dagon("resume", run, "--broker", deployment.url, "--coordinator", "main")
        assert resumed.returncode in (0, 1), resumed.stderr
        async with asyncio.timeout(20):
            while not captured:
                msg = await anext(messages)
                if b"resume" in msg.payload:
                    captured.append(msg.payload)
    await until(lambda: marker.read_text().count("try") == 2, within=30, what="the genuine resume")
    assert deployment.coordinator is not None
    deployment.coordinator.terminate()
    deployment.coordinator.wait()
    deployment.start_coordinator()
    await deployment.wait_log("serving on", count=2)
    async with MqttTransport(deployment.url, client_id="intruder") as intruder:
        await intruder.publish(topics.coordinator_inbox("main"), captured[0])
    await deployment.wait_log("(replayed)")
    assert marker.read_text().count("try") == 2  # the replay ran nothing
