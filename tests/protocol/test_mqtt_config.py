"""MqttTransport without a broker: URL parsing, validation, connection errors."""

from __future__ import annotations

import time

import pytest
from _broker import free_port

from dagon.protocol import ConfigError, TransportError
from dagon.protocol.transport import BrokerURL, MqttTransport, redact_url


async def test_first_connect_failure_is_quick_and_clear() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TransportError, match=rf"could not connect to the MQTT broker at mqtt://127\.0\.0\.1:{port}"):
        async with MqttTransport(f"mqtt://127.0.0.1:{port}", client_id="t-none", connect_timeout=5):
            pass
    assert time.monotonic() - started < 2


async def test_operations_outside_the_context_fail_clearly() -> None:
    transport = MqttTransport(f"mqtt://127.0.0.1:{free_port()}", client_id="t-closed")
    with pytest.raises(TransportError, match="not open"):
        await transport.publish("x", b"y")


def test_broker_url_parsing_and_redaction() -> None:
    url = BrokerURL.parse("mqtts://alice:s3cret@broker.example:8884")
    assert (url.host, url.port, url.tls, url.username, url.password) == (
        "broker.example",
        8884,
        True,
        "alice",
        "s3cret",
    )
    assert str(url) == "mqtts://alice:***@broker.example:8884"
    assert "s3cret" not in str(MqttTransport("mqtt://u:s3cret@h", client_id="x").url)
    assert BrokerURL.parse("mqtt://h") == BrokerURL("h", 1883)
    assert BrokerURL.parse("mqtts://h").port == 8883
    assert BrokerURL.parse("mqtt://bob@h").username == "bob"
    assert BrokerURL.parse("mqtt://u:p%40ss%3Aw@h").password == "p@ss:w"  # percent-encoded
    assert BrokerURL.parse("mqtt://[::1]:1884").host == "::1"
    assert redact_url("mqtt://bob:pw@h:1") == "mqtt://bob:***@h:1"
    assert redact_url("mqtt://h:1") == "mqtt://h:1"
    for bad in ("http://h", "mqtt://", "h:1883", "mqtt://h:notaport", "mqtt://h:70000"):
        with pytest.raises(ConfigError, match="broker URL"):
            BrokerURL.parse(bad)
    with pytest.raises(ConfigError, match=r"broker URL 'ws://u:\*\*\*@h'"):
        BrokerURL.parse("ws://u:secret@h")  # the error message does not leak the password


def test_transport_constructor_validates() -> None:
    with pytest.raises(ConfigError, match="protocol"):
        MqttTransport("mqtt://h", client_id="x", protocol="4")
    with pytest.raises(ConfigError, match="client id"):
        MqttTransport("mqtt://h", client_id="")


def test_broker_url_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(BrokerURL.parse("mqtt://alice:s3cret@h"))
