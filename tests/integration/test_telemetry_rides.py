"""An agent's telemetry sample rides on its heartbeat (issue 21: half the messages a fleet sends).

A real ``dagon-agent`` process on a real Mosquitto, its internal telemetry topic read off the broker
and decoded by the real codec with the agent's pinned key; a coordinator on the same broker takes the
samples. Then what a coordinator does with a heartbeat that carries a sample it must not take.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from _keys import AGENT, coordinator_security

from dagon._keys import agent_signer, coordinator_signer, coordinator_trust
from dagon.core import Coordinator, CoordinatorListener
from dagon.protocol import AgentId, Codec, Heartbeat, KeyRing, Message, Signer, Telemetry, topics
from dagon.protocol.transport import MemoryHub, MqttTransport

from ._stack import hub_agent, start_agent


class Samples(CoordinatorListener):
    def __init__(self) -> None:
        self.samples: list[Telemetry] = []

    def agent_telemetry(self, sample: Telemetry) -> None:
        self.samples.append(sample)


@pytest.mark.mosquitto
async def test_a_real_agent_sends_one_message_per_period_with_the_sample_on_the_heartbeat(
    mosquitto: Any, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("heartbeat_interval = 1.0\ntelemetry_interval = 1.0\n")
    agent = start_agent(mosquitto.url, tmp_path, "rider", args=["--config", str(config)])
    try:
        codec = Codec(sender="reader", trust=KeyRing([agent_signer(tmp_path / "rider").public_key]))
        received: list[tuple[float, Message]] = []
        async with MqttTransport(mosquitto.url, client_id="reader") as reader:
            await reader.subscribe(topics.agent_telemetry("rider"))
            messages = reader.messages()
            async with asyncio.timeout(60):  # the agent is up: its first heartbeat
                first = codec.decode((await anext(messages)).payload).message
            assert isinstance(first, Heartbeat), first
            start = time.monotonic()
            async with asyncio.timeout(30):
                while time.monotonic() - start < 8:
                    message = codec.decode((await anext(messages)).payload).message  # signed by the agent's key
                    received.append((time.monotonic() - start, message))
    finally:
        stop_process(agent)
    kinds = {type(m).__name__ for _, m in received}
    assert kinds == {"Heartbeat"}, kinds  # no sample in a message of its own
    beats = [m for _, m in received if isinstance(m, Heartbeat)]
    carrying = [b for b in beats if b.telemetry is not None]
    # 8 s at 1 s: 8 periods. Apart, heartbeat and sample were ~16 messages; riding together ~8 (a
    # beat goes without its sample only when sampling outlasts its patience, 0.5 s, on a loaded machine).
    shown = [(round(t, 2), isinstance(m, Heartbeat) and m.telemetry is not None) for t, m in received]
    assert 3 <= len(beats) <= 12, shown
    assert len(carrying) >= min(4, len(beats) - 1), shown
    assert all(b.telemetry is not None and b.telemetry.agent == "rider" for b in carrying)
    assert [b.seq for b in beats] == sorted({b.seq for b in beats})  # one sequence, no beat twice


@pytest.mark.mosquitto
async def test_a_coordinator_takes_the_samples_riding_on_a_real_agents_heartbeats(
    mosquitto: Any, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('heartbeat_interval = 0.5\ntelemetry_interval = 0.5\npower_source = "model"\n')
    samples = Samples()
    agent = start_agent(mosquitto.url, tmp_path, "rider", args=["--config", str(config)])  # enrolled and approved
    try:
        home = tmp_path / "client"  # the coordinator's keys and the agents it approved
        coordinator = Coordinator(
            connect=lambda will: MqttTransport(mosquitto.url, client_id="coordinator", will=will),
            coordinator_id="main", signer=coordinator_signer(home), trust=coordinator_trust(home),
        )  # fmt: skip
        coordinator.add_listener(samples)
        async with coordinator:
            async with asyncio.timeout(60):
                await coordinator.wait_for_agents(1)
            async with asyncio.timeout(30):
                while len(samples.samples) < 4:
                    await asyncio.sleep(0.05)
            assert coordinator.rejections == {}
            latest = coordinator.telemetry.latest[AgentId("rider")]
    finally:
        stop_process(agent)
    assert latest is samples.samples[-1] and latest.power_source == "model"
    assert [s.sampled_at for s in samples.samples] == sorted(s.sampled_at for s in samples.samples)


async def test_a_heartbeat_carrying_another_agents_sample_is_refused_and_a_stale_ones_sample_is_taken(
    hub: MemoryHub, tmp_path: Path
) -> None:
    samples = Samples()
    coordinator = Coordinator(
        connect=lambda will: hub.transport(will=will), coordinator_id="test", **coordinator_security()
    )
    coordinator.add_listener(samples)
    agent = hub_agent(hub, tmp_path, "agent0", telemetry_interval=0.2, heartbeat_interval=0.2)
    async with coordinator, agent, hub.transport() as intruder:
        await coordinator.wait_for_agents(1)
        async with asyncio.timeout(20):
            while not samples.samples:
                await asyncio.sleep(0.02)
        good = samples.samples[-1]
        signed = Codec(sender="agent/agent0", signer=AGENT)  # the agent's own key: only the content is wrong
        topic = topics.agent_telemetry("agent0")
        other = dataclasses.replace(good, agent=AgentId("agent1"), sampled_at=good.sampled_at + 1)
        wrong = Heartbeat(agent=AgentId("agent0"), seq=10**9, running=0, free_slots=1, session="x", telemetry=other)
        await intruder.publish(topic, signed.encode(wrong))
        async with asyncio.timeout(10):
            while not coordinator.rejections:
                await asyncio.sleep(0.02)
        assert coordinator.rejections == {"unexpected": 1}
        assert all(s.agent == "agent0" for s in samples.samples)
        # A heartbeat of a session that is over (stale for liveness) still delivers its sample, as a
        # sample in a message of its own always did; a forged one does not.
        later = dataclasses.replace(good, sampled_at=time.time() + 30, cpu_percent=12.5)
        stale = Heartbeat(agent=AgentId("agent0"), seq=1, running=0, free_slots=1, session="old", telemetry=later)
        forged = Codec(sender="agent/agent0", signer=Signer.generate())
        await intruder.publish(topic, forged.encode(dataclasses.replace(stale, telemetry=dataclasses.replace(
            later, sampled_at=later.sampled_at + 1, cpu_percent=99.0))))  # fmt: skip
        await intruder.publish(topic, signed.encode(stale))
        async with asyncio.timeout(10):
            while coordinator.telemetry.latest[AgentId("agent0")].sampled_at != later.sampled_at:
                await asyncio.sleep(0.02)
        assert all(s.cpu_percent != 99.0 for s in samples.samples)
        assert coordinator.engine.agents[AgentId("agent0")].online  # the stale session did not take it over
        # A sample in a message of its own, as agents before this change send it, is still taken.
        apart = dataclasses.replace(good, sampled_at=later.sampled_at + 5, cpu_percent=7.5)
        await intruder.publish(topic, signed.encode(apart))
        async with asyncio.timeout(10):
            while coordinator.telemetry.latest[AgentId("agent0")].sampled_at != apart.sampled_at:
                await asyncio.sleep(0.02)
        # An impossible sample on a live heartbeat is refused (the heartbeat itself is not).
        refused = coordinator.rejections.get("value", 0)
        bad = dataclasses.replace(good, sampled_at=apart.sampled_at + 5, cpu_percent=250.0)
        live = Heartbeat(
            agent=AgentId("agent0"), seq=10**9, running=0, free_slots=1, session=agent.session, telemetry=bad
        )
        await intruder.publish(topic, signed.encode(live))
        async with asyncio.timeout(10):
            while coordinator.rejections.get("value", 0) == refused:
                await asyncio.sleep(0.02)
        assert coordinator.telemetry.latest[AgentId("agent0")].sampled_at == apart.sampled_at
        assert coordinator.engine.agents[AgentId("agent0")].online
