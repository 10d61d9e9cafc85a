"""Prometheus exporters of a coordinator and an agent, scraped over HTTP while a workflow runs."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dagon._metrics_http import serve_metrics
from dagon.agent._exporter import AgentMetrics
from dagon.core import RunState
from dagon.core._metrics import CoordinatorMetrics
from dagon.protocol import decode_public
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack, taskflow


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_exporters_count_tasks_energy_and_agents(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, agents):
        cmetrics = CoordinatorMetrics()
        cmetrics.bind(coordinator)
        ametrics = AgentMetrics(agents[0])
        with serve_metrics(cmetrics.registry, port=0) as cport, serve_metrics(ametrics.registry, port=0) as aport:
            run = await coordinator.submit(taskflow())
            result = await coordinator.wait(run)
            assert result.state is RunState.SUCCEEDED, result.cause
            c = await asyncio.to_thread(_scrape, cport)
            a = await asyncio.to_thread(_scrape, aport)
    succeeded = (("runtime", "process"), ("state", "succeeded"))
    assert c[("dagon_tasks_total", succeeded)] == 5
    assert c[("dagon_agents_online", ())] == 1
    assert c[("dagon_task_duration_seconds_count", (("runtime", "process"),))] == 5
    assert a[("dagon_tasks_total", succeeded)] == 5
    assert ("dagon_agent_memory_used_bytes", ()) in a
    power = [v for (name, labels), v in a.items() if name == "dagon_agent_power_watts"]
    assert power and power[0] > 0  # the CPU model: no sensors on these VMs
    energy = sum(v for (name, _), v in c.items() if name == "dagon_task_energy_joules_total")
    assert energy > 0


async def test_task_result_documents_carry_energy(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, agents), hub.transport() as observer:
        await observer.subscribe("dagon/v1/runs/+/tasks/+/result")
        # the model source needs one telemetry sample before it can attribute energy
        assert agents[0].telemetry is not None
        while agents[0].telemetry.samples < 1:
            await asyncio.sleep(0.01)
        run = await coordinator.submit(taskflow())
        assert (await coordinator.wait(run)).state is RunState.SUCCEEDED
        docs: list[Any] = []
        async with asyncio.timeout(10):
            messages = observer.messages()
            while len(docs) < 5:
                docs.append(decode_public((await anext(messages)).payload))
    for doc in docs:
        assert doc["energy"]["joules"] > 0 and doc["energy"]["measured"] is False
        assert doc["energy"]["source"] == "model"
