"""Issue 15, attack 7: a data grant read off the broker opens nothing for anyone but the agent it
was minted for, and nothing for that agent either once the attempt it was minted for has ended.
Real processes, real Mosquitto, real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from _broker import free_port

from dagon._keys import agent_signer, client_signer
from dagon.protocol import AssignTasks, CancelRun, Codec, RunId, Signer, StageInput, bind_grant, topics
from dagon.protocol.transport import MqttTransport

from ._deploy import Deployment, run_finished, task_results, until

pytestmark = pytest.mark.mosquitto


@contextlib.asynccontextmanager
async def sniffing(url: str, topic: str) -> AsyncIterator[list[bytes]]:
    """Every payload published on ``topic`` while the block runs."""
    seen: list[bytes] = []
    async with MqttTransport(url, client_id=f"sniffer-{os.urandom(3).hex()}") as sniffer:
        await sniffer.subscribe(topic)

        async def sniff() -> None:
            async for msg in sniffer.messages():
                seen.append(msg.payload)

        task = asyncio.create_task(sniff())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def granted_inputs(sniffed: list[bytes]) -> list[StageInput]:
    plain = Codec(sender="thief")  # signed, not encrypted: anyone on the broker reads it
    return [
        i
        for payload in sniffed
        if isinstance(message := plain.decode(payload).message, AssignTasks)
        for a in message.tasks
        for i in a.inputs
        if i.token
    ]


async def listing(item: StageInput, token: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, session.get(f"{item.url}/v1/list", headers=headers) as r:
        return r.status, await r.text()


async def test_a_sniffed_grant_opens_nothing_from_another_machine(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    deployment.start_agent("other", env={"DAGON_HOST_ID": "another-host"})  # pulls over HTTP
    async with sniffing(deployment.url, topics.agent_tasks("other")) as sniffed:
        wf = deployment.workflow(
            "p2p",
            [
                ("A", "echo confidential > f.txt", {"agent": "edge"}),
                ("B", "cat workflow:///A/f.txt", {"agent": "other"}),
            ],
        )
        run, out = deployment.submit(wf)  # blocks this loop: the sniffer reads its backlog below
        await until(lambda: bool(sniffed), within=10, what="B's assignment")
        await asyncio.sleep(0.5)
    assert out.returncode == 0, out.stderr + deployment.logs()
    assert (await task_results(deployment.url, run))["B"]["state"] == "succeeded"  # the holder could pull
    (item,) = granted_inputs(sniffed)
    assert item.token and item.url
    async with aiohttp.ClientSession() as session:
        for token in (item.token, bind_grant(item.token, Signer.generate())):
            async with session.get(f"{item.url}/v1/list", headers={"Authorization": f"Bearer {token}"}) as r:
                body = await r.text()
                assert r.status in (401, 403), (r.status, body)
                assert "confidential" not in body
            async with session.get(f"{item.url}/v1/files/f.txt", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status in (401, 403)
                assert "confidential" not in await r.text()


@pytest.mark.timeout(300)  # three runs and an agent restart: ~40 s, twice that on a busy machine
async def test_a_grant_expires_with_the_attempt_it_was_minted_for(deployment: Deployment) -> None:
    """The consumer agent itself (its key: a compromised agent, or anyone holding it) keeps a grant
    it was sent: it opens the producer's files while the attempt runs, and nothing once the attempt
    ended — succeeded, or cancelled — also after the serving agent restarted; nor through the
    coordinator's relay (a producer others cannot reach uploads there)."""
    deployment.start_coordinator()
    port = str(free_port())  # the same data server URL after the restart below
    deployment.start_agent("edge", "--data-port", port)
    deployment.start_agent("other", env={"DAGON_HOST_ID": "another-host"})
    deployment.start_agent("hidden", "--unreachable", env={"DAGON_HOST_ID": "hidden-host"})
    consumer_key = agent_signer(deployment.agent_home("other"))
    kept: list[tuple[StageInput, str]] = []
    cases = (("finishes", "edge", "sleep 4"), ("cancelled", "edge", "sleep 60"), ("relayed", "hidden", "sleep 4"))
    for name, producer, end in cases:
        wf = deployment.workflow(
            name,
            [
                ("A", f"echo {name}-secret > f.txt", {"agent": producer, "keep": True}),  # never garbage-collected
                ("B", f"cat workflow:///A/f.txt; {end}", {"agent": "other"}),
            ],
        )  # fmt: skip
        async with sniffing(deployment.url, topics.agent_tasks("other")) as sniffed:
            run, out = deployment.submit(wf, wait=False)
            assert out.returncode == 0, out.stderr
            await until(lambda: bool(granted_inputs(sniffed)), within=30, what="B's assignment with its grant")
        (item,) = granted_inputs(sniffed)
        assert item.relay == (name == "relayed"), item
        token = bind_grant(item.token, consumer_key)  # what the consumer agent sends
        status, body = await listing(item, token)
        assert status == 200 and "f.txt" in body, (status, body)  # valid while B runs
        if name == "cancelled":  # as `dagon run` does on Ctrl-C: a CancelRun signed with a client key
            async with MqttTransport(deployment.url, client_id="operator") as operator:
                codec = Codec(sender="client/operator", signer=client_signer(deployment.home))
                await operator.publish(topics.coordinator_inbox("main"), codec.encode(CancelRun(RunId(run), "test")))
        ended = await run_finished(deployment.url, run)
        assert ended["state"] == ("cancelled" if name == "cancelled" else "succeeded"), ended
        status, body = await _refused_soon(item, token)
        assert status == 403 and "revoked" in body, (status, body)
        kept.append((item, token))
    deployment.stop_agent("edge")  # the serving agent restarts: it still remembers
    deployment.start_agent("edge", "--data-port", port)
    await deployment.wait_log("agent edge online", name="edge", count=2)
    for item, token in kept:
        status, body = await _refused_soon(item, token)
        assert status == 403 and "revoked" in body, (status, body)
    assert "was revoked" in deployment.logs("edge") and "was revoked" in deployment.logs()


async def _refused_soon(item: StageInput, token: str, within: float = 10) -> tuple[int, str]:
    """The listing's answer once it is a refusal (the revocation travels with the coordinator's
    next drive pass after the attempt's end)."""
    answer = (0, "")

    async def refused() -> bool:
        nonlocal answer
        answer = await listing(item, token)
        return answer[0] != 200

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await refused() and loop.time() < deadline:
        await asyncio.sleep(0.2)
    return answer
