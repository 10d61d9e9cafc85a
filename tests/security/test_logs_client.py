"""`dagon logs` from a client machine: a DAGON_HOME holding only a client key the coordinator trusts
(`dagon keys trust-client`) and the coordinator's public key (`dagon keys trust-coordinator`). It asks
the coordinator with a signed `LogsRequest`; the answer carries the agent's data URL and a `logs` grant
held by the client's key, which the client binds with its private key — so a grant read off the broker
opens nothing for anyone else. Real `dagon coordinator`, `dagon-agent` and Mosquitto."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from dagon._keys import agent_signer, client_signer
from dagon.protocol import Answer, Codec, LogsRequest, RunId, Signer, bind_grant, topics
from dagon.protocol.transport import MqttTransport

from ._deploy import Deployment, until
from .test_logs_remote import dagon_in

pytestmark = pytest.mark.mosquitto

BIG = "seq 1 3000; seq 1 2000 >&2"  # 13,893 bytes of stdout, 8,893 of stderr: more than the 4 KiB tail


def _client_home(deployment: Deployment, name: str) -> Path:
    home = deployment.tmp / name
    shown = dagon_in(home, "keys", "client")
    assert shown.returncode == 0, shown.stderr
    pinned = dagon_in(home, "keys", "trust-coordinator", str(deployment.home / "keys" / "coordinator.pub"))
    assert pinned.returncode == 0, pinned.stderr
    return home


async def _ask(url: str, signer: Signer, request: LogsRequest) -> Answer:
    """Send ``request`` signed by ``signer`` to the coordinator's inbox; its answer."""
    async with MqttTransport(url, client_id=f"asker-{request.reply_to}") as asker:
        await asker.subscribe(topics.client_answers(request.reply_to))
        await asker.publish(topics.coordinator_inbox("main"), Codec(sender="client/t", signer=signer).encode(request))
        async with asyncio.timeout(20):
            async for msg in asker.messages():
                answer = Codec(sender="t").decode(msg.payload).message
                assert isinstance(answer, Answer)
                return answer
    raise AssertionError("no answer")


def _expected(n: int) -> str:
    return "".join(f"{i}\n" for i in range(1, n + 1))


async def test_a_trusted_client_reads_the_whole_log(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    run, out = deployment.submit(deployment.workflow("client-logs", [("big", BIG, {})]))
    assert out.returncode == 0, out.stderr + deployment.logs()
    url = deployment.url
    laptop = _client_home(deployment, "laptop")

    # Not trusted yet: refused, and told which command fixes it.
    refused = dagon_in(laptop, "logs", run, "big", "--broker", url, "--answer-timeout", "20")
    assert refused.returncode == 2, refused.stderr
    assert "does not trust this client's key" in refused.stderr, refused.stderr
    assert (
        "dagon keys trust-client client.pub" in refused.stderr and str(laptop / "keys" / "client.pub") in refused.stderr
    )

    trusted = deployment.dagon("keys", "trust-client", str(laptop / "keys" / "client.pub"))
    assert trusted.returncode == 0, trusted.stderr
    got = dagon_in(laptop, "logs", run, "big", "--broker", url)
    assert (got.returncode, got.stderr) == (0, ""), got.stderr
    assert got.stdout == _expected(3000) and len(got.stdout) > 4096
    err = dagon_in(laptop, "logs", run, "big", "--stderr", "--attempt", "1", "--broker", url)
    assert (err.returncode, err.stdout, err.stderr) == (0, _expected(2000), ""), err.stderr

    # The coordinator checks what it grants: the attempt and task must exist, the key must be a client's.
    own = client_signer(laptop)
    answer = await _ask(url, own, LogsRequest(RunId(run), "big", 2, "stdout", "t1"))
    assert (answer.accepted, answer.code, answer.token) == (False, "invalid", ""), answer
    answer = await _ask(url, own, LogsRequest(RunId(run), "nope", 1, "stdout", "t2"))
    assert (answer.accepted, answer.code) == (False, "invalid") and "no task 'nope'" in answer.reason
    answer = await _ask(url, own, LogsRequest(RunId(run), "big", 1, "command", "t3"))
    assert (answer.accepted, answer.code) == (False, "invalid"), answer
    answer = await _ask(
        url, agent_signer(deployment.agent_home("edge")), LogsRequest(RunId(run), "big", 1, "stdout", "t4")
    )
    assert (answer.accepted, answer.code, answer.token) == (False, "untrusted", ""), answer
    answer = await _ask(url, own, LogsRequest(RunId(run), "big", 1, "stdout", "t5"))
    assert answer.accepted and answer.url and answer.token, answer

    # A grant captured on the broker is useless to a third party: it is held by the laptop's key.
    captured: list[Answer] = []
    async with MqttTransport(url, client_id="eavesdropper") as spy:
        await spy.subscribe(topics.client_answers("any").rsplit("/", 2)[0] + "/+/answers")  # every client's
        messages = spy.messages()

        async def listen() -> None:
            async for msg in messages:
                answer = Codec(sender="spy").decode(msg.payload).message
                if isinstance(answer, Answer) and answer.token:
                    captured.append(answer)

        listener = asyncio.create_task(listen())
        try:
            again = await asyncio.to_thread(dagon_in, laptop, "logs", run, "big", "--broker", url)
            assert again.returncode == 0 and again.stdout == _expected(3000), again.stderr
            await until(lambda: bool(captured), within=10, what="the coordinator's answer on the broker")
        finally:
            listener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listener
    answer = captured[0]
    stranger = Signer.generate()
    async with aiohttp.ClientSession() as session:

        async def get(bearer: str) -> int:
            headers = {"Authorization": f"Bearer {bearer}"}
            async with session.get(f"{answer.url}/v1/logs/stdout", headers=headers) as resp:
                return resp.status

        assert await get(answer.token) == 403  # unbound: proves no key
        assert await get(bind_grant(answer.token, stranger)) == 403  # bound with a key it does not name


async def test_agent_offline_falls_back_to_the_tail(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    run, out = deployment.submit(
        deployment.workflow("offline-logs", [("bad", "echo partial; echo broken >&2; exit 3", {})])
    )
    assert out.returncode == 1, out.stderr + deployment.logs()
    laptop = _client_home(deployment, "laptop")
    assert deployment.dagon("keys", "trust-client", str(laptop / "keys" / "client.pub")).returncode == 0
    deployment.stop_agent("edge")
    started = time.monotonic()
    tail = dagon_in(laptop, "logs", run, "bad", "--stderr", "--broker", deployment.url)
    assert (tail.returncode, tail.stdout) == (0, "broken\n"), tail.stderr
    assert "stderr tail the coordinator kept" in tail.stderr and "agent edge is not online" in tail.stderr, tail.stderr
    none = dagon_in(laptop, "logs", run, "bad", "--broker", deployment.url)
    assert none.returncode == 2 and "agent edge is not online" in none.stderr, none.stderr
    assert "the coordinator keeps no copy of stdout" in none.stderr
    assert time.monotonic() - started < 60  # answered, not timed out
