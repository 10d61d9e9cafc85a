"""Issue 15, attack 9: run ids a client chooses are validated; the retained run status follows the
run. Real processes, real Mosquitto."""

from __future__ import annotations

import asyncio

import pytest

from dagon._keys import client_signer
from dagon.protocol import Codec, RunId, SubmitRun, decode_public, topics
from dagon.protocol.transport import MqttTransport

from ._deploy import Deployment, retained, until

pytestmark = pytest.mark.mosquitto

BAD_IDS = ["../../escape", "a/b", "nul\x00byte", "..", ".hidden", "x" * 200, "", "new\nline"]


async def test_a_submitted_run_id_that_could_name_another_path_is_rejected(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    _, out = deployment.submit(deployment.workflow("fine", [("A", "true", {})]))  # a valid id works
    assert out.returncode == 0, out.stderr
    codec = Codec(sender="client/attacker", signer=client_signer(deployment.home))  # a trusted client's key
    marker = deployment.tmp / "ran.txt"
    workflow = {"version": 1, "name": "w", "tasks": [{"name": "t", "command": f"echo ran >> {marker}"}]}
    async with MqttTransport(deployment.url, client_id="client") as client:
        for run in BAD_IDS:
            await client.publish(topics.coordinator_inbox("main"), codec.encode(SubmitRun(RunId(run), workflow)))
        await deployment.wait_log("rejected a submitted run", count=1)
    await until(lambda: deployment.logs().count("is not allowed") >= len(BAD_IDS), within=30, what="every rejection")
    assert not marker.exists()
    scratch = deployment.agent_home("edge") / "scratch"
    assert not (deployment.tmp / "escape").exists() and not (scratch.parent / "escape").exists()
    assert deployment.alive()


async def test_the_retained_status_follows_a_run_between_commands(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    wf = deployment.workflow("two", [("quick", "true", {}), ("slow", "sleep 8", {})])
    run, out = deployment.submit(wf, wait=False)
    assert out.returncode == 0, out.stderr
    seen: list[dict[str, object]] = []

    async def status() -> dict[str, object]:
        docs = await retained(deployment.url, topics.run_status(run), settle=0.3)
        doc = decode_public(docs[topics.run_status(run)]) if docs.get(topics.run_status(run)) else {}
        seen.append(doc)
        return doc

    async with asyncio.timeout(60):
        while True:
            doc = await status()
            counts = doc.get("counts") or {}
            assert doc.get("state") != "succeeded", f"the run ended before its status showed 'quick' done: {seen}"
            if isinstance(counts, dict) and counts.get("succeeded") == 1:
                break  # 'quick' succeeded while 'slow' still runs, and the retained status says so
