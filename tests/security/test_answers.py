"""A client believes only its coordinator's answers, and only those about its own requests.

The client's side of issue 14's answers over the in-memory transport (every message through the
real codec): an answer signed by another key, one from another sender, and a refusal of a copy
of its request re-signed by someone else are ignored; the genuine answer ends the wait.
"""

from __future__ import annotations

import asyncio

import pytest

from dagon._remote import ClientIdentity, NoAnswer, RemoteRuns, RunRejected
from dagon.protocol import (
    Answer,
    Codec,
    KeyRing,
    RunId,
    Signer,
    SubmitRun,
    fingerprint,
    topics,
)
from dagon.protocol.transport import MemoryHub, MemoryTransport

COORDINATOR = Signer.generate()
CLIENT = Signer.generate()
STRANGER = Signer.generate()
RUN = RunId("r-1")


def client(hub: MemoryHub, *, timeout: float = 5.0) -> tuple[RemoteRuns, MemoryTransport]:
    transport = hub.transport()
    codec = Codec(sender="client/c1", signer=CLIENT, trust=KeyRing([COORDINATOR.public_key], what="coordinator"))
    identity = ClientIdentity("c1", CLIENT.key_id, fingerprint(CLIENT.public_key), "/home/u/keys/client.pub")
    remote = RemoteRuns(transport, codec, "main", identity=identity, broker="mqtt://b", answer_timeout=timeout)
    return remote, transport


async def serve(
    remote: RemoteRuns, hub: MemoryHub, answers: list[tuple[Signer, str, dict[str, object]]], ready: asyncio.Event
) -> None:
    """Play the coordinator: read the first request, hand ``answers`` to the client in order."""
    inbox = hub.transport()
    async with inbox:
        await inbox.subscribe(topics.coordinator_inbox("main"))
        ready.set()
        async for msg in inbox.messages():
            request = Codec(sender="peek").decode(msg.payload)
            assert isinstance(request.message, SubmitRun) and request.message.reply_to == "c1"
            for signer, sender, fields in answers:
                answer = Answer(request.id, "submit", RUN, **fields)  # type: ignore[arg-type]
                remote.on_message(topics.client_answers("c1"), Codec(sender=sender, signer=signer).encode(answer))
            return


async def coordinator(
    remote: RemoteRuns, hub: MemoryHub, answers: list[tuple[Signer, str, dict[str, object]]]
) -> asyncio.Task[None]:
    """:func:`serve` started, subscribed to the inbox."""
    ready = asyncio.Event()
    task = asyncio.create_task(serve(remote, hub, answers, ready))
    await ready.wait()
    return task


async def test_only_the_genuine_answer_counts(hub: MemoryHub) -> None:
    remote, transport = client(hub)
    async with transport:
        await remote.open()
        forged = [
            (STRANGER, "coordinator/main", {"accepted": False, "reason": "forged", "code": "invalid"}),
            (COORDINATOR, "coordinator/other", {"accepted": False, "reason": "another coordinator", "code": "invalid"}),
            (
                COORDINATOR,
                "coordinator/main",
                {"accepted": False, "reason": "copy", "code": "untrusted", "key": STRANGER.key_id},
            ),
            (COORDINATOR, "coordinator/main", {"accepted": True, "key": CLIENT.key_id}),
        ]
        server = await coordinator(remote, hub, forged)
        answer = await remote.request(lambda reply: SubmitRun(RUN, {"version": 1}, False, reply), RUN)
        await server
    assert answer.accepted


async def test_a_refusal_of_its_own_key_names_the_fingerprint_and_the_fix(hub: MemoryHub) -> None:
    remote, transport = client(hub)
    async with transport:
        await remote.open()
        refusal = [(COORDINATOR, "coordinator/main", {"accepted": False, "code": "untrusted", "key": CLIENT.key_id})]
        server = await coordinator(remote, hub, refusal)
        with pytest.raises(RunRejected) as info:
            await remote.request(lambda reply: SubmitRun(RUN, {"version": 1}, False, reply), RUN)
        await server
    assert info.value.code == "untrusted"
    assert fingerprint(CLIENT.public_key) in str(info.value)
    assert "copy /home/u/keys/client.pub" in str(info.value) and "dagon keys trust-client client.pub" in str(info.value)


async def test_without_a_believable_answer_the_wait_ends_in_time_and_says_why(hub: MemoryHub) -> None:
    remote, transport = client(hub, timeout=1.0)
    async with transport:
        await remote.open()
        forged: list[tuple[Signer, str, dict[str, object]]] = [(STRANGER, "coordinator/main", {"accepted": True})]
        server = await coordinator(remote, hub, forged)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(NoAnswer) as info:
            await remote.request(lambda reply: SubmitRun(RUN, {"version": 1}, False, reply), RUN)
        await server
    assert loop.time() - started < 3
    text = str(info.value)
    assert "no coordinator with id 'main' answered the submission on mqtt://b within 1 s" in text
    assert "An answer arrived but was refused" in text
