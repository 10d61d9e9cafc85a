"""Publish properties are packed once per content type and expiry (paho packs them per message)."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dagon.protocol.transport import MqttTransport


def test_cached_properties_pack_to_the_same_bytes_as_pahos_own() -> None:
    transport = MqttTransport("mqtt://127.0.0.1:1", client_id="props-test")
    props = transport._properties("application/json", 604800)
    assert props is not None
    plain = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    plain.ContentType = "application/json"
    plain.MessageExpiryInterval = 604800
    expected = plain.pack()  # type: ignore[no-untyped-call]
    packed = props.pack()  # type: ignore[no-untyped-call]
    assert packed == expected and props.pack() is packed  # type: ignore[no-untyped-call]
    assert transport._properties("application/json", 604800) is props
    assert transport._properties(None, None) is None
    assert MqttTransport("mqtt://127.0.0.1:1", client_id="v3", protocol="3.1.1")._properties("text/plain") is None
