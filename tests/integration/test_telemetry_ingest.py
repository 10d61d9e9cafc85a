"""Agent telemetry as signed msgpack ``Telemetry`` messages, ingested by the coordinator.

A real agent samples its node (psutil, CPU-model power source) and publishes on its internal
telemetry topic through the real codec and signatures; heartbeats keep flowing beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _keys import AGENT, coordinator_security

import dagon
from dagon.agent import Agent
from dagon.core import (
    Coordinator,
    CoordinatorListener,
    RunSnapshot,
    RunState,
    RunTransition,
    TaskSnapshot,
    TaskTransition,
)
from dagon.protocol import AgentId, Codec, Signer, Telemetry, topics
from dagon.protocol.transport import MemoryHub

from ._stack import hub_agent


class Recorder(CoordinatorListener):
    def __init__(self) -> None:
        self.samples: list[Telemetry] = []

    def agent_telemetry(self, sample: Telemetry) -> None:
        self.samples.append(sample)


@contextlib.asynccontextmanager
async def running(hub: MemoryHub, tmp: Path, recorder: Recorder) -> AsyncIterator[tuple[Coordinator, Agent]]:
    coordinator = Coordinator(
        connect=lambda will: hub.transport(will=will), coordinator_id="test", **coordinator_security()
    )
    coordinator.add_listener(recorder)
    agent = hub_agent(hub, tmp, "agent0", telemetry_interval=0.1, heartbeat_interval=0.1, power_source="model")
    async with coordinator, agent:
        await coordinator.wait_for_agents(1)
        yield coordinator, agent


async def test_agent_samples_reach_the_coordinator_and_its_listeners(hub: MemoryHub, tmp_path: Path) -> None:
    recorder = Recorder()
    async with running(hub, tmp_path, recorder) as (coordinator, agent):
        seen = coordinator.engine.agents[AgentId("agent0")].last_seen
        async with asyncio.timeout(20):
            while len(recorder.samples) < 3:
                await asyncio.sleep(0.02)
        latest = coordinator.telemetry.latest[AgentId("agent0")]
        assert latest is recorder.samples[-1]
        assert [s.sampled_at for s in recorder.samples] == sorted(s.sampled_at for s in recorder.samples)
        assert 0 <= latest.cpu_percent <= 100 and 0 < latest.memory_used <= latest.memory_total
        assert len(latest.per_core_percent) >= 1 and len(latest.load_avg) == 3
        assert latest.power_source == "model" and latest.power_measured is False
        assert latest.power_watts is not None and latest.power_watts > 0
        assert agent.telemetry is not None and agent.telemetry.last_power is not None
        assert coordinator.rejections == {}  # heartbeats and telemetry share the topic; none refused
        async with asyncio.timeout(10):  # heartbeats still mark the agent alive
            while coordinator.engine.agents[AgentId("agent0")].last_seen <= seen:
                await asyncio.sleep(0.02)


async def test_forged_impossible_and_stale_samples_are_refused(hub: MemoryHub, tmp_path: Path) -> None:
    recorder = Recorder()
    async with running(hub, tmp_path, recorder) as (coordinator, _agent), hub.transport() as intruder:
        async with asyncio.timeout(20):
            while not recorder.samples:
                await asyncio.sleep(0.02)
        good = recorder.samples[-1]
        topic = topics.agent_telemetry("agent0")
        real_key = Codec(sender="agent/agent0", signer=AGENT)
        forged = Codec(sender="agent/agent0", signer=Signer.generate())
        future = good.sampled_at + 3600
        await intruder.publish(topic, forged.encode(dataclasses.replace(good, sampled_at=future, cpu_percent=99.0)))
        await intruder.publish(topic, real_key.encode(dataclasses.replace(good, sampled_at=future, cpu_percent=250.0)))
        await intruder.publish(
            topic, real_key.encode(dataclasses.replace(good, sampled_at=future, power_watts=float("nan")))
        )
        await intruder.publish(topic, real_key.encode(dataclasses.replace(good, sampled_at=1.0, cpu_percent=42.0)))
        async with asyncio.timeout(10):
            while sum(coordinator.rejections.values()) < 3:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the agent's own samples keep arriving meanwhile
        assert coordinator.rejections["value"] == 2
        assert sum(coordinator.rejections.values()) == 3  # the forged one under its own reason
        kept = coordinator.telemetry.latest[AgentId("agent0")]
        assert kept.sampled_at < future and kept.cpu_percent <= 100
        assert all(s.sampled_at != 1.0 and s.cpu_percent <= 100 for s in recorder.samples)  # stale one ignored


class Broken(CoordinatorListener):
    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> None:
        self.calls += 1
        raise RuntimeError("listener bug")

    def run_changed(self, transition: RunTransition, run: RunSnapshot) -> None:
        self._fail()

    def task_changed(self, transition: TaskTransition, task: TaskSnapshot) -> None:
        self._fail()

    def agent_telemetry(self, sample: Telemetry) -> None:
        self._fail()


async def test_a_failing_listener_never_stops_the_coordinator(
    hub: MemoryHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken, recorder = Broken(), Recorder()
    async with running(hub, tmp_path, recorder) as (coordinator, _agent):
        coordinator.listeners.insert(0, broken)  # called before the recorder
        wf = dagon.Workflow("despite")
        wf.shell("a", "true")
        wf.shell("b", "true", after=["a"])
        run = await coordinator.submit(wf)
        result = await coordinator.wait(run)
        samples = len(recorder.samples)
        async with asyncio.timeout(10):
            while len(recorder.samples) == samples:  # listeners after the broken one are still called
                await asyncio.sleep(0.02)
    assert result.state is RunState.SUCCEEDED
    assert broken.calls >= 2 + 4  # run started and ended, two tasks through dispatched/running/succeeded
    assert "listener bug" in caplog.text
