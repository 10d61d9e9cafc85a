"""Prometheus metrics of one agent, in a private ``CollectorRegistry`` (needs the ``metrics`` extra).

Counters are updated as tasks finish; node figures (CPU, memory, temperatures,
power) are read from the latest telemetry sample at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dagon.protocol import TaskResult

if TYPE_CHECKING:
    from dagon.agent._agent import Agent

__all__ = ["DURATION_BUCKETS", "AgentMetrics"]

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


class AgentMetrics(Collector):
    """The agent's metrics; :attr:`registry` is what an exporter serves."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("state", "runtime")
        self.tasks = Counter("dagon_tasks", "Task attempts ended on this agent", labels, registry=self.registry)
        self.duration = Histogram(
            "dagon_task_duration_seconds", "Wall time of task attempts", ("runtime",), buckets=DURATION_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.energy = Counter(
            "dagon_task_energy_joules",
            "Energy attributed to task attempts",
            ("runtime", "measured"),
            registry=self.registry,
        )
        self.registry.register(self)
        agent.metrics = self

    def task_finished(self, result: TaskResult, runtime: str) -> None:
        self.tasks.labels(result.status.value, runtime).inc()
        self.duration.labels(runtime).observe(result.duration)
        if result.energy_joules > 0:
            self.energy.labels(runtime, "true" if result.energy_measured else "false").inc(result.energy_joules)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        running = GaugeMetricFamily("dagon_agent_tasks_running", "Tasks running now")
        running.add_metric([], agent._active)
        yield running
        queued = GaugeMetricFamily("dagon_agent_queue_depth", "Accepted assignments waiting for a slot")
        queued.add_metric([], len(agent._queued))
        yield queued
        rejected = GaugeMetricFamily(
            "dagon_protocol_rejections", "Incoming messages refused, by reason (count since start)", labels=["reason"]
        )
        for reason, count in dict(agent.rejections).items():
            rejected.add_metric([reason], count)
        yield rejected
        telemetry = agent.telemetry
        if telemetry is None or not telemetry.sampler.history:
            return
        doc = telemetry.sampler.history[-1]
        cpu = GaugeMetricFamily("dagon_agent_cpu_percent", "Node CPU utilisation", labels=["core"])
        cpu.add_metric(["all"], doc["cpu_percent"])
        for i, value in enumerate(doc["per_core_percent"]):
            cpu.add_metric([str(i)], value)
        yield cpu
        mem = GaugeMetricFamily("dagon_agent_memory_used_bytes", "Node memory in use")
        mem.add_metric([], doc["memory_used"])
        yield mem
        total = GaugeMetricFamily("dagon_agent_memory_total_bytes", "Node memory")
        total.add_metric([], doc["memory_total"])
        yield total
        temps = GaugeMetricFamily("dagon_agent_temperature_celsius", "Sensor temperatures", labels=["sensor"])
        for sensor, value in doc["temperatures"].items():
            temps.add_metric([sensor], value)
        yield temps
        reading = telemetry.last_power
        if reading is not None:
            power = GaugeMetricFamily("dagon_agent_power_watts", "Node power draw", labels=["source", "measured"])
            power.add_metric([reading.source, "true" if reading.measured else "false"], reading.watts)
            yield power
            energy = GaugeMetricFamily("dagon_agent_energy_joules", "Node energy since the agent started")
            energy.add_metric([], telemetry.ledger.total_joules)
            yield energy
