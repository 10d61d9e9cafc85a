"""The embedded amqtt broker through the real MqttTransport (MQTT 3.1.1)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import psutil
import pytest

from dagon._embedded import EMBEDDED_PROTOCOL, EmbeddedBroker
from dagon.protocol import TransportError
from dagon.protocol.transport import Incoming, MqttTransport, Publisher

from ._clients import doomed_client


def client(broker: EmbeddedBroker, name: str) -> MqttTransport:
    return MqttTransport(broker.url, client_id=name, protocol=EMBEDDED_PROTOCOL)


async def receive(transport: MqttTransport, n: int = 1, wait: float = 5.0) -> list[Incoming]:
    out: list[Incoming] = []
    async with asyncio.timeout(wait):
        async for msg in transport.messages():
            out.append(msg)
            if len(out) == n:
                break
    return out


def listening_addresses(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


async def test_listens_on_loopback_only_and_stops_cleanly() -> None:
    before = asyncio.all_tasks()
    async with EmbeddedBroker() as broker:
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert listening_addresses(broker.port) == {"127.0.0.1"}
        async with client(broker, "c1") as c:
            await c.publish("x", b"y")
    assert listening_addresses(broker.port) == set()
    with pytest.raises(OSError):  # noqa: PT011 - refused, whatever errno the platform gives
        socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set(), "amqtt left tasks running"


async def test_stops_cleanly_with_clients_still_connected() -> None:
    before = asyncio.all_tasks()
    async with EmbeddedBroker() as broker:
        c = client(broker, "lingering")
        await c.__aenter__()
        await c.subscribe("#")
    await c.__aexit__(None, None, None)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


async def test_qos1_retained_and_wildcards(embedded_broker: EmbeddedBroker) -> None:
    async with client(embedded_broker, "pub") as pub:
        await pub.publish("dagon/v1/runs/r/status", b"kept", retain=True)  # returns after PUBACK
        async with client(embedded_broker, "sub") as sub:
            await sub.subscribe("dagon/v1/runs/+/status", "dagon/v1/agents/#")
            (msg,) = await receive(sub)
            assert (msg.topic, msg.payload, msg.retain) == ("dagon/v1/runs/r/status", b"kept", True)
            await pub.publish("dagon/v1/agents/a/tasks", b"live", qos=1)
            await pub.publish("dagon/v1/other", b"not matched")
            (msg,) = await receive(sub)
            assert (msg.topic, msg.payload, msg.retain) == ("dagon/v1/agents/a/tasks", b"live", False)


async def test_pipelined_burst_arrives_complete_and_in_order(embedded_broker: EmbeddedBroker) -> None:
    n = 500
    async with client(embedded_broker, "p") as pub, client(embedded_broker, "s") as sub:
        await sub.subscribe("burst")
        publisher = Publisher(pub, limit=100)
        for i in range(n):
            await publisher.send("burst", str(i).encode())
        await publisher.drain()
        got = await receive(sub, n, wait=20)
        assert [int(m.payload) for m in got] == list(range(n))


async def test_last_will_when_a_client_is_sigkilled(embedded_broker: EmbeddedBroker) -> None:
    async with client(embedded_broker, "watch") as watcher:
        await watcher.subscribe("dagon/v1/agents/+/status")
        async with doomed_client(
            embedded_broker.url, will_topic="dagon/v1/agents/doomed/status", protocol=EMBEDDED_PROTOCOL
        ) as pid:
            os.kill(pid, signal.SIGKILL)
            (msg,) = await receive(watcher)
            assert (msg.topic, msg.payload) == ("dagon/v1/agents/doomed/status", b"died")


async def test_mqtt5_is_refused_with_a_clear_error(embedded_broker: EmbeddedBroker) -> None:
    with pytest.raises(TransportError, match="Unsupported protocol version"):
        async with MqttTransport(embedded_broker.url, client_id="v5", protocol="5", connect_timeout=3):
            pass


async def test_fixed_port_and_port_in_use() -> None:
    async with EmbeddedBroker() as first:
        with pytest.raises(
            TransportError, match=rf"could not start the embedded MQTT broker on 127\.0\.0\.1:{first.port}"
        ):
            async with EmbeddedBroker(port=first.port):
                pass
        port = first.port
    async with EmbeddedBroker(port=port) as again:  # the port is free again after a clean stop
        assert again.url == f"mqtt://127.0.0.1:{port}"
    with pytest.raises(ValueError, match="port"):
        EmbeddedBroker(port=70000)


async def test_cannot_enter_twice(embedded_broker: EmbeddedBroker) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        await embedded_broker.__aenter__()


def test_amqtt_loggers_are_quiet_but_root_is_untouched() -> None:
    assert logging.getLogger("amqtt").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("amqtt.broker").getEffectiveLevel() >= logging.WARNING
    assert not logging.getLogger("amqtt").handlers
