"""MQTT 5 persistent sessions and delayed Last Wills against a real Mosquitto, with a real
connection cut (``_proxy.py``) between one client and the broker."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from dagon.protocol.transport import MqttTransport, Will

from ._proxy import CuttableProxy

pytestmark = pytest.mark.mosquitto


@pytest.mark.parametrize("expiry", [0, 60])
async def test_messages_sent_while_cut_off_are_kept_only_with_a_session(mosquitto: Any, expiry: int) -> None:
    topic = f"t/session-{expiry}"
    async with (
        CuttableProxy(mosquitto.port) as proxy,
        MqttTransport(
            proxy.url, client_id=f"kept-{expiry}", session_expiry=expiry, max_backoff=0.3, connect_timeout=2
        ) as cut,
        MqttTransport(mosquitto.url, client_id=f"sender-{expiry}") as sender,
    ):
        await cut.subscribe(topic)
        await sender.publish(topic, b"before")
        messages = cut.messages()
        async with asyncio.timeout(5):
            assert (await anext(messages)).payload == b"before"
        reconnected = asyncio.ensure_future(cut.wait_reconnect())
        proxy.cut()
        await asyncio.sleep(0.5)  # the broker has noticed the connection is gone
        await sender.publish(topic, b"while-cut-off")
        proxy.restore()
        async with asyncio.timeout(10):
            await reconnected
        await sender.publish(topic, b"after")
        got: list[bytes] = []
        async with asyncio.timeout(5):
            while not got or got[-1] != b"after":
                got.append((await anext(messages)).payload)
    # With a session the broker queued the message for the client; without, it was lost.
    # (It may deliver "before" again too: its acknowledgement can die with the connection.)
    assert (b"while-cut-off" in got) == bool(expiry)
    assert got[-1] == b"after" and set(got) <= {b"before", b"while-cut-off", b"after"}


@pytest.mark.parametrize("delay", [0, 30])
async def test_a_delayed_last_will_waits_for_the_client_to_come_back(mosquitto: Any, delay: int) -> None:
    will_topic = f"t/will-{delay}"
    async with (
        MqttTransport(mosquitto.url, client_id=f"watch-{delay}") as watcher,
        CuttableProxy(mosquitto.port) as proxy,
    ):
        await watcher.subscribe(will_topic)
        client = MqttTransport(
            proxy.url, client_id=f"mortal-{delay}", will=Will(will_topic, b"gone", retain=False),
            session_expiry=60, will_delay=delay, max_backoff=0.3, connect_timeout=2,
        )  # fmt: skip
        async with client:
            reconnected = asyncio.ensure_future(client.wait_reconnect())
            proxy.cut()
            await asyncio.sleep(1.0)
            proxy.restore()
            async with asyncio.timeout(10):
                await reconnected
            wills = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    wills.append((await anext(watcher.messages())).payload)
    # Without a delay the broker tells at once; with one, the client was back in time.
    assert wills == ([b"gone"] if delay == 0 else [])
