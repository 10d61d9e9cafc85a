"""The agent's telemetry sampler, its public JSON topic, and energy in task results."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from dagon.agent._telemetry import TelemetrySampler
from dagon.protocol import SCHEMA_TELEMETRY, ConfigError, ResultStatus, decode_public, topics
from dagon.protocol.transport import MemoryHub

from ._support import AGENT, agent_config, assign, running_agent


def test_sampler_figures_and_ring_buffer(tmp_path: Path) -> None:
    sampler = TelemetrySampler(disk_path=tmp_path, history=3)
    docs = [sampler.sample() for _ in range(5)]
    assert len(sampler.history) == 3 and sampler.history[-1] is docs[-1]
    doc = docs[-1]
    assert 0 <= doc["cpu_percent"] <= 100
    assert len(doc["per_core_percent"]) == sampler.cpus
    assert 0 < doc["memory_used"] < doc["memory_total"]
    assert doc["disk_total"] > 0 and doc["agent_rss"] > 1_000_000
    assert doc["net_recv_bps"] >= 0 and isinstance(doc["temperatures"], dict)


def test_telemetry_config_is_validated(tmp_path: Path) -> None:
    assert agent_config(tmp_path).telemetry_interval == 5.0
    with pytest.raises(ConfigError, match="power_idle_watts"):
        agent_config(tmp_path, power_idle_watts=20, power_max_watts=10)
    with pytest.raises(ConfigError, match="telemetry_interval"):
        agent_config(tmp_path, telemetry_interval=-1)


async def test_agent_publishes_json_telemetry_and_task_energy(hub: MemoryHub, tmp_path: Path) -> None:
    flags = {"telemetry_interval": 0.1, "power_source": "model", "power_idle_watts": 2.0, "power_max_watts": 12.0}
    async with running_agent(hub, tmp_path, **flags) as (agent, coord), hub.transport() as observer:
        await observer.subscribe(topics.agent_telemetry_json(AGENT))
        doc = decode_public((await anext(observer.messages())).payload, schema=SCHEMA_TELEMETRY)
        assert doc["agent"] == AGENT and doc["power"]["source"] == "model" and doc["power"]["measured"] is False
        assert 2.0 <= doc["power"]["watts"] <= 12.0
        spin = f'{sys.executable} -c "import time\nt=time.process_time()\nwhile time.process_time()-t<0.6: pass"'
        await coord.assign(assign("burn", spin))
        result = (await coord.results(1))["burn"]
        assert result.status is ResultStatus.SUCCEEDED, result.stderr_tail
        assert result.cpu_time >= 0.5
        assert result.energy_source == "model" and result.energy_measured is False
        # a share of the modelled power, never more than the model's maximum over the task
        assert 0 < result.energy_joules <= 12.0 * result.duration + 1e-6
        assert result.power_watts == pytest.approx(result.energy_joules / result.duration)
        assert agent.telemetry is not None and agent.telemetry.samples >= 1


async def test_agent_without_telemetry(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, telemetry_interval=0) as (agent, coord):
        assert agent.telemetry is None
        await coord.assign(assign("t", "true"))
        result = (await coord.results(1))["t"]
        assert result.energy_joules == 0.0 and result.energy_source == ""


async def test_agent_takes_power_from_an_mqtt_smart_plug(hub: MemoryHub, tmp_path: Path) -> None:
    flags = {"telemetry_interval": 0.05, "power_source": "mqtt", "power_mqtt_topic": "tele/plug-pi/SENSOR"}
    tasmota = (Path(__file__).parent / "fixtures" / "tasmota_sensor.json").read_bytes()
    async with running_agent(hub, tmp_path, **flags) as (agent, _), hub.transport() as observer:
        await observer.subscribe(topics.agent_telemetry_json(AGENT))
        await observer.publish("tele/plug-pi/SENSOR", tasmota)
        messages = observer.messages()
        async with asyncio.timeout(10):
            while True:  # samples taken before the plug's message have no power
                doc = decode_public((await anext(messages)).payload, schema=SCHEMA_TELEMETRY)
                if doc["power"] is not None:
                    break
        assert doc["power"]["source"] == "mqtt" and doc["power"]["watts"] == 23.0 and doc["power"]["measured"]
        assert not agent.rejections  # the plug's topic is not an agent protocol error
