"""`dagon broker-config` against a real Mosquitto: TLS client certificates and the per-agent ACL hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from _broker import MOSQUITTO_MISSING, Mosquitto, free_port, missing, mosquitto_binary
from _keys import coordinator_security

from dagon._brokerconfig import BrokerBundle, generate_broker_config
from dagon.core import Coordinator, RunState
from dagon.protocol import AgentId, Codec, Offline, TransportError, topics
from dagon.protocol.transport import MqttAuth, MqttTransport

from ._stack import mqtt_agent, taskflow

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Mosquitto, BrokerBundle]]:
    binary = mosquitto_binary()
    if binary is None:
        missing(MOSQUITTO_MISSING)
    port = free_port()
    bundle = generate_broker_config(tmp_path / "broker", agents=["edge1", "edge2"], clients=["alice"], port=port)
    config = bundle.config.read_text()
    # pytest's tmp dirs are private to root; as root mosquitto would drop to its own user and lose them
    bundle.config.write_text(config + "user root\nlog_dest stderr\n")
    broker = Mosquitto(binary=binary, workdir=tmp_path / "mosquitto", port=port, config=bundle.config)
    try:
        broker.start()
        yield broker, bundle
    finally:
        broker.stop()


def auth(bundle: BrokerBundle, identity: str | None) -> MqttAuth:
    if identity is None:
        return MqttAuth(ca_file=bundle.ca)
    cert, key = bundle.identities[identity]
    return MqttAuth(ca_file=bundle.ca, cert_file=cert, key_file=key)


async def test_a_run_over_tls_and_an_agent_cannot_speak_for_another(
    secured: tuple[Mosquitto, BrokerBundle], tmp_path: Path
) -> None:
    broker, bundle = secured
    url = f"mqtts://localhost:{broker.port}"
    seen: list[tuple[str, bytes]] = []
    coordinator = Coordinator(
        connect=lambda will: MqttTransport(url, client_id="coord", will=will, auth=auth(bundle, "coordinator:main")),
        coordinator_id="main",
        **coordinator_security(),
    )
    async with (
        coordinator,
        MqttTransport(url, client_id="observer", auth=auth(bundle, "coordinator:main")) as observer,
        mqtt_agent(url, tmp_path, "edge1", auth=auth(bundle, "edge1")),
        MqttTransport(url, client_id="edge2-rogue", auth=auth(bundle, "edge2")) as rogue,
    ):
        await observer.subscribe("dagon/wire/v1/agents/#")

        async def watch() -> None:
            async for msg in observer.messages():
                seen.append((msg.topic, msg.payload))

        watching = asyncio.create_task(watch())
        await coordinator.wait_for_agents(1)
        result = await coordinator.wait(await coordinator.submit(taskflow()))
        assert result.state is RunState.SUCCEEDED, result.cause

        # edge2 may write its own status; it may not write edge1's, nor read edge1's tasks
        codec = Codec(sender="agent/edge2")
        await rogue.subscribe(topics.agent_tasks("edge1"))
        await rogue.publish(topics.agent_status("edge2"), codec.encode(Offline(agent=AgentId("edge2"), reason="own")))
        forged = codec.encode(Offline(agent=AgentId("edge1"), reason="forged"))
        with contextlib.suppress(TransportError):  # an MQTT 5 broker may answer "not authorized"
            await rogue.publish(topics.agent_status("edge1"), forged)
        with contextlib.suppress(TransportError):
            await rogue.publish(topics.agent_telemetry("edge1"), forged)
        second = await coordinator.wait(await coordinator.submit(taskflow()))
        assert second.state is RunState.SUCCEEDED
        async with asyncio.timeout(5):
            while not any(t == topics.agent_status("edge2") for t, _ in seen):
                await asyncio.sleep(0.05)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                stolen = await anext(rogue.messages())
                pytest.fail(f"edge2 read edge1's task topic: {stolen.topic}")
    assert forged not in [payload for _, payload in seen]
    assert "edge1" in coordinator.engine.agents  # still online: the forged Offline never arrived


async def test_without_a_client_certificate_the_broker_refuses(secured: tuple[Mosquitto, BrokerBundle]) -> None:
    broker, bundle = secured
    url = f"mqtts://localhost:{broker.port}"
    with pytest.raises(TransportError):
        async with MqttTransport(url, client_id="anonymous", auth=auth(bundle, None), connect_timeout=3):
            pass
    with pytest.raises(TransportError):  # plain TCP to a TLS listener
        async with MqttTransport(f"mqtt://127.0.0.1:{broker.port}", client_id="plain", connect_timeout=3):
            pass


def test_running_again_keeps_the_ca_and_adds_agents(tmp_path: Path) -> None:
    first = generate_broker_config(tmp_path, agents=["a1"])
    ca = first.ca.read_bytes()
    cert_a1 = first.identities["a1"][0].read_bytes()
    second = generate_broker_config(tmp_path, agents=["a1", "a2"])
    assert second.ca.read_bytes() == ca and second.identities["a1"][0].read_bytes() == cert_a1
    assert set(second.identities) == {"coordinator:main", "a1", "a2"}
    assert (second.identities["a2"][1].stat().st_mode & 0o777) == 0o600
    acl = second.acl.read_text()
    assert "pattern write dagon/wire/v1/agents/%u/status" in acl and "user coordinator:main" in acl
