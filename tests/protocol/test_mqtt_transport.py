"""MqttTransport against a real Mosquitto 2: QoS 1, retained, MQTT 5 content type,
Last Will on a real SIGKILL, reconnect across a broker restart, clear errors."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from _broker import Mosquitto

from dagon.protocol import CONTENT_TYPE_JSON, TransportError
from dagon.protocol.transport import Incoming, MqttTransport, Publisher

from ._clients import doomed_client

pytestmark = pytest.mark.mosquitto


async def receive(transport: MqttTransport, n: int = 1, wait: float = 5.0) -> list[Incoming]:
    out: list[Incoming] = []
    async with asyncio.timeout(wait):
        async for msg in transport.messages():
            out.append(msg)
            if len(out) == n:
                break
    return out


async def test_publish_subscribe_qos1_and_retained(mosquitto: Mosquitto, topic_prefix: str) -> None:
    t = topic_prefix
    async with MqttTransport(mosquitto.url, client_id=f"{t}-pub") as pub:
        await pub.publish(f"{t}/kept", b"old", retain=True)
        await pub.publish(f"{t}/kept", b"kept", retain=True)  # returns after PUBACK: stored now
        async with MqttTransport(mosquitto.url, client_id=f"{t}-sub") as sub:
            await sub.subscribe(f"{t}/#")
            (msg,) = await receive(sub)
            assert (msg.topic, msg.payload, msg.retain) == (f"{t}/kept", b"kept", True)
            await pub.publish(f"{t}/live", b"now", qos=1)
            await pub.publish(f"{t}/zero", b"qos0", qos=0)
            got = await receive(sub, 2)
            assert [(m.topic, m.payload, m.retain) for m in got] == [
                (f"{t}/live", b"now", False),
                (f"{t}/zero", b"qos0", False),
            ]
            await sub.unsubscribe(f"{t}/#")
            await pub.publish(f"{t}/kept", b"", retain=True)  # clears the retained message
            await sub.subscribe(f"{t}/kept")
            with pytest.raises(TimeoutError):
                await receive(sub, wait=0.3)


async def test_pipelined_burst_arrives_complete_and_in_order(mosquitto: Mosquitto, topic_prefix: str) -> None:
    n = 2000
    async with (
        MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-p") as pub,
        MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-s") as sub,
    ):
        await sub.subscribe(f"{topic_prefix}/burst")
        publisher = Publisher(pub, limit=200)
        for i in range(n):
            await publisher.send(f"{topic_prefix}/burst", str(i).encode())
        await publisher.drain()
        assert publisher.failures == 0
        got = await receive(sub, n, wait=20)
        assert [int(m.payload) for m in got] == list(range(n))


async def test_content_type_property_reaches_an_mqtt5_subscriber(mosquitto: Mosquitto, topic_prefix: str) -> None:
    topic = f"{topic_prefix}/json"
    async with MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-ct") as pub:
        await pub.publish(topic, b"{}", retain=True, content_type=CONTENT_TYPE_JSON)
    # An independent MQTT 5 client (mosquitto-clients) prints the content type (%C).
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "mqttv5",
        "-t", topic, "-C", "1", "-W", "5", "-F", "%C|%p",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().strip() == f"{CONTENT_TYPE_JSON}|{{}}"


async def test_mqtt311_client_works_and_ignores_content_type(mosquitto: Mosquitto, topic_prefix: str) -> None:
    async with MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-v3", protocol="3.1.1") as t:
        await t.subscribe(f"{topic_prefix}/#")
        await t.publish(f"{topic_prefix}/x", b"v3", content_type=CONTENT_TYPE_JSON)
        (msg,) = await receive(t)
        assert msg.payload == b"v3"


async def test_last_will_is_delivered_when_the_client_is_sigkilled(mosquitto: Mosquitto, topic_prefix: str) -> None:
    will_topic = f"{topic_prefix}/will"
    async with MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-watch") as watcher:
        await watcher.subscribe(will_topic)
        async with doomed_client(mosquitto.url, will_topic=will_topic) as pid:
            with pytest.raises(TimeoutError):
                await receive(watcher, wait=0.2)  # alive: no will
            os.kill(pid, signal.SIGKILL)
            (msg,) = await receive(watcher)
            assert (msg.topic, msg.payload) == (will_topic, b"died")
        async with MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-late") as late:
            await late.subscribe(will_topic)
            (msg,) = await receive(late)
            assert (msg.payload, msg.retain) == (b"died", True)  # the will was retained


async def test_clean_exit_publishes_no_will(mosquitto: Mosquitto, topic_prefix: str) -> None:
    from dagon.protocol.transport import Will

    will_topic = f"{topic_prefix}/will"
    async with MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-watch") as watcher:
        await watcher.subscribe(will_topic)
        async with MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-ok", will=Will(will_topic, b"x")):
            pass
        with pytest.raises(TimeoutError):
            await receive(watcher, wait=0.5)


async def test_reconnects_after_broker_restart_and_delivers_publish_made_during_outage(
    mosquitto: Mosquitto, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}/restart"
    async with (
        MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-a", max_backoff=0.5) as a,
        MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-b", max_backoff=0.5) as b,
    ):
        await b.subscribe(topic)
        await asyncio.to_thread(mosquitto.stop)
        # Issued while the broker is down: it waits for the reconnect, then goes out.
        # Retained, because the restarted broker (no persistence) knows nothing of
        # b's subscription until b has resubscribed, which may come after a's publish.
        pending = asyncio.create_task(a.publish(topic, b"after", retain=True))
        await asyncio.sleep(0.3)
        assert not pending.done()
        await asyncio.to_thread(mosquitto.start)
        async with asyncio.timeout(15):
            await pending
        (msg,) = await receive(b, wait=15)
        assert msg.payload == b"after"
        assert a.reconnects >= 1 and b.reconnects >= 1
        # b's subscription survived the restart: live messages flow again.
        await a.publish(topic, b"live")
        (msg,) = await receive(b)
        assert (msg.payload, msg.retain) == (b"live", False)


async def test_close_fails_a_publish_that_awaits_its_ack(mosquitto: Mosquitto, topic_prefix: str) -> None:
    transport = MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-c")
    await transport.__aenter__()
    os.kill(mosquitto.pid, signal.SIGSTOP)  # a frozen broker: the PUBACK never comes
    try:
        pending = asyncio.create_task(transport.publish(f"{topic_prefix}/x", b"1"))
        await asyncio.sleep(0.2)
        await transport.__aexit__(None, None, None)
        with pytest.raises(TransportError):
            async with asyncio.timeout(2):
                await pending
    finally:
        os.kill(mosquitto.pid, signal.SIGCONT)
        if not pending.done():
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
