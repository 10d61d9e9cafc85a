"""The in-memory transport: MQTT semantics dagon relies on, without a broker."""

from __future__ import annotations

import asyncio

import pytest

from dagon.protocol import TransportError
from dagon.protocol.transport import Incoming, MemoryHub, MemoryTransport, Will


async def receive(transport: MemoryTransport, n: int = 1, wait: float = 1.0) -> list[Incoming]:
    out: list[Incoming] = []
    async with asyncio.timeout(wait):
        async for msg in transport.messages():
            out.append(msg)
            if len(out) == n:
                break
    return out


async def nothing_pending(transport: MemoryTransport) -> bool:
    try:
        await receive(transport, wait=0.05)
    except TimeoutError:
        return True
    return False


async def test_publish_subscribe_with_wildcards(hub: MemoryHub) -> None:
    async with hub.transport() as pub, hub.transport() as sub:
        await sub.subscribe("dagon/v1/agents/+/status", "dagon/v1/runs/#")
        await pub.publish("dagon/v1/agents/a/status", b"1")
        await pub.publish("dagon/v1/agents/a/tasks", b"not matched")
        await pub.publish("dagon/v1/runs/r/tasks/t/result", b"2")
        await pub.publish("dagon/v1/runs", b"3")  # '#' includes the parent level
        got = await receive(sub, 3)
        assert [(m.topic, m.payload, m.retain) for m in got] == [
            ("dagon/v1/agents/a/status", b"1", False),
            ("dagon/v1/runs/r/tasks/t/result", b"2", False),
            ("dagon/v1/runs", b"3", False),
        ]
        await sub.unsubscribe("dagon/v1/runs/#")
        await pub.publish("dagon/v1/runs/r/status", b"4")
        assert await nothing_pending(sub)


async def test_retained_delivered_on_subscribe_and_cleared_by_empty_payload(hub: MemoryHub) -> None:
    async with hub.transport() as pub:
        await pub.publish("r/1", b"old", retain=True)
        await pub.publish("r/1", b"new", retain=True)  # replaces
        await pub.publish("r/2", b"two", retain=True)
        await pub.publish("r/3", b"three", retain=True)
        await pub.publish("r/3", b"", retain=True)  # clears
        async with hub.transport() as sub:
            await sub.subscribe("r/+")
            got = await receive(sub, 2)
            assert {(m.topic, m.payload, m.retain) for m in got} == {("r/1", b"new", True), ("r/2", b"two", True)}
            await pub.publish("r/1", b"live", retain=True)
            (live,) = await receive(sub)
            assert (live.payload, live.retain) == (b"live", False)  # live delivery is not flagged retained
            assert await nothing_pending(sub)


async def test_will_is_published_when_killed_not_on_clean_exit(hub: MemoryHub) -> None:
    will = Will("dagon/v1/agents/a/status", b"gone")
    async with hub.transport() as watcher:
        await watcher.subscribe("dagon/v1/agents/+/status")
        async with hub.transport(will=will):
            pass  # clean close: no will
        assert await nothing_pending(watcher)

        agent = hub.transport(will=will)
        await agent.__aenter__()
        await agent.publish("dagon/v1/agents/a/status", b"here", retain=True)
        hub.kill(agent)
        got = await receive(watcher, 2)
        assert [m.payload for m in got] == [b"here", b"gone"]
        await agent.__aexit__(None, None, None)  # idempotent after a kill
        with pytest.raises(TransportError, match="closed"):
            await agent.publish("x", b"y")
    async with hub.transport() as late:
        await late.subscribe("dagon/v1/agents/#")
        (msg,) = await receive(late)
        assert (msg.payload, msg.retain) == (b"gone", True)  # the will was retained


async def test_message_iterator_ends_when_the_transport_closes(hub: MemoryHub) -> None:
    transport = hub.transport()
    async with transport:
        await transport.subscribe("#")
        reader = asyncio.create_task(receive(transport, n=10))
        await asyncio.sleep(0)
        await transport.publish("a", b"1")
    got = await reader
    assert [m.payload for m in got] == [b"1"]
    assert hub.published == 1
