"""MqttTransport against a real Mosquitto: retained, content type, Last Will on a
real SIGKILL, reconnect across a broker restart, clear errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from dagon.protocol import ConfigError, TransportError
from dagon.protocol.transport import BrokerURL, MqttTransport, redact_url

pytestmark = pytest.mark.mosquitto


async def next_message(transport: MqttTransport, wait: float = 5.0) -> Any:
    async with asyncio.timeout(wait):
        return await anext(transport.messages())


async def test_publish_subscribe_and_retained(mosquitto: Any) -> None:
    async with MqttTransport(mosquitto.url, client_id="t-pub") as pub:
        await pub.publish("t/retained", b"kept", retain=True, content_type="application/json")
        async with MqttTransport(mosquitto.url, client_id="t-sub") as sub:
            await sub.subscribe("t/#")
            msg = await next_message(sub)
            assert (msg.topic, msg.payload, msg.retain) == ("t/retained", b"kept", True)
            await pub.publish("t/live", b"now")
            msg = await next_message(sub)
            assert (msg.topic, msg.payload, msg.retain) == ("t/live", b"now", False)


async def test_content_type_reaches_mosquitto_sub(mosquitto: Any) -> None:
    async with MqttTransport(mosquitto.url, client_id="t-ct") as pub:
        await pub.publish("t/json", b"{}", retain=True, content_type="application/json")
    out = subprocess.run(
        ["mosquitto_sub", "-p", str(mosquitto.port), "-h", "127.0.0.1", "-V", "mqttv5", "-t", "t/json",
         "-C", "1", "-F", "%C|%p", "-W", "5"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "application/json|{}"


CHILD = """
import asyncio, sys
from dagon.protocol.transport import MqttTransport, Will
async def main():
    will = Will("t/will", b"died")
    async with MqttTransport(sys.argv[1], client_id="t-doomed", will=will):
        print("ready", flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_last_will_after_sigkill(mosquitto: Any) -> None:
    async with MqttTransport(mosquitto.url, client_id="t-watch") as watcher:
        await watcher.subscribe("t/will")
        child = subprocess.Popen([sys.executable, "-c", CHILD, mosquitto.url], stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None
            line = await asyncio.to_thread(child.stdout.readline)
            assert line.strip() == b"ready"
            os.kill(child.pid, signal.SIGKILL)
            msg = await next_message(watcher)
            assert msg.payload == b"died"
        finally:
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()


async def test_reconnects_after_broker_restart_and_delivers_late_publish(mosquitto: Any) -> None:
    async with (
        MqttTransport(mosquitto.url, client_id="t-a", max_backoff=0.5) as a,
        MqttTransport(mosquitto.url, client_id="t-b", max_backoff=0.5) as b,
    ):
        await b.subscribe("t/restart")
        await asyncio.to_thread(mosquitto.stop)
        # Published while the broker is down: waits for the reconnect, then goes out.
        # Retained, because the restarted broker (no persistence) forgot b's
        # subscription until b resubscribes, which may happen after a's publish.
        pending = asyncio.create_task(a.publish("t/restart", b"after", retain=True))
        await asyncio.sleep(0.3)
        assert not pending.done()
        await asyncio.to_thread(mosquitto.start)
        async with asyncio.timeout(15):
            await pending
        msg = await next_message(b, wait=15)
        assert msg.payload == b"after"
        assert a.reconnects >= 1 and b.reconnects >= 1


async def test_first_connect_failure_is_quick_and_clear() -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"could not connect to the MQTT broker at mqtt://127\.0\.0\.1:9"):
        async with MqttTransport("mqtt://127.0.0.1:9", client_id="t-none", connect_timeout=3):
            pass
    assert time.monotonic() - started < 5


def test_broker_url_parsing_and_redaction() -> None:
    url = BrokerURL.parse("mqtts://alice:s3cret@broker.example:8884")
    assert (url.host, url.port, url.tls, url.username, url.password) == (
        "broker.example",
        8884,
        True,
        "alice",
        "s3cret",
    )
    assert "s3cret" not in str(url)
    assert BrokerURL.parse("mqtt://h").port == 1883
    assert BrokerURL.parse("mqtts://h").port == 8883
    assert redact_url("mqtt://bob:pw@h:1") == "mqtt://bob:***@h:1"
    for bad in ("http://h", "mqtt://", "h:1883", "mqtt://h:notaport"):
        with pytest.raises(ConfigError, match="broker URL"):
            BrokerURL.parse(bad)
