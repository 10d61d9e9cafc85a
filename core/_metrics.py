"""Prometheus metrics of one coordinator, in a private ``CollectorRegistry`` (needs the ``metrics`` extra)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dagon.core._views import TaskView

if TYPE_CHECKING:
    from dagon.core._coordinator import Coordinator
    from dagon.core._mongo import MongoSink

__all__ = ["CoordinatorMetrics"]

_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


class CoordinatorMetrics(Collector):
    """Task counters (fed by the coordinator as tasks end) and gauges read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._coordinator: Coordinator | None = None
        self.tasks = Counter("dagon_tasks", "Tasks ended, by final state", ("state", "runtime"), registry=self.registry)
        self.duration = Histogram(
            "dagon_task_duration_seconds", "Wall time of the tasks' last attempts", ("runtime",), buckets=_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.energy = Counter(
            "dagon_task_energy_joules", "Energy attributed to tasks", ("runtime", "measured"), registry=self.registry
        )
        self.registry.register(self)
        self._sink: MongoSink | None = None

    def watch_sink(self, sink: MongoSink) -> None:
        """Also export the MongoDB sink's buffer and write counts."""
        self._sink = sink

    def bind(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        coordinator.metrics = self

    def task_ended(self, view: TaskView) -> None:
        runtime = view.spec.runtime
        self.tasks.labels(view.state.value, runtime).inc()
        result = view.result
        if result is None:
            return
        self.duration.labels(runtime).observe(result.duration)
        if result.energy_joules > 0:
            self.energy.labels(runtime, "true" if result.energy_measured else "false").inc(result.energy_joules)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        c = self._coordinator
        if c is None:
            return
        online = GaugeMetricFamily("dagon_agents_online", "Agents announced and not lost")
        online.add_metric([], c.agents_online)
        yield online
        rejected = GaugeMetricFamily(
            "dagon_protocol_rejections", "Incoming messages refused, by reason (count since start)", labels=["reason"]
        )
        for reason, count in dict(c.rejections).items():
            rejected.add_metric([reason], count)
        yield rejected
        depth = GaugeMetricFamily("dagon_queue_depth", "Items waiting in the coordinator's queues", labels=["queue"])
        for name, size in c.queue_depths().items():
            depth.add_metric([name], size)
        yield depth
        runs = GaugeMetricFamily("dagon_runs", "Runs known to the coordinator, by state", labels=["state"])
        counts: dict[str, int] = {}
        for view in list(c.engine.runs.values()):
            counts[view.state.value] = counts.get(view.state.value, 0) + 1
        for state, n in counts.items():
            runs.add_metric([state], n)
        yield runs
        yield from _agent_gauges(c)
        if self._sink is not None:
            yield from _sink_metrics(self._sink)


def _agent_gauges(c: Coordinator) -> Iterator[Metric]:
    """The latest telemetry sample of every online agent."""
    cpu = GaugeMetricFamily("dagon_agent_cpu_percent", "Node CPU utilisation of each agent", labels=["agent"])
    mem = GaugeMetricFamily("dagon_agent_memory_used_bytes", "Node memory in use of each agent", labels=["agent"])
    power = GaugeMetricFamily(
        "dagon_agent_power_watts", "Node power draw of each agent", labels=["agent", "source", "measured"]
    )
    agents = c.engine.agents
    for agent, sample in list(c.telemetry.latest.items()):
        view = agents.get(agent)
        if view is None or not view.online:
            continue
        cpu.add_metric([agent], sample.cpu_percent)
        mem.add_metric([agent], sample.memory_used)
        if sample.power_watts is not None:
            measured = "true" if sample.power_measured else "false"
            power.add_metric([agent, sample.power_source, measured], sample.power_watts)
    yield cpu
    yield mem
    yield power


def _sink_metrics(sink: MongoSink) -> Iterator[Metric]:
    stats = sink.stats()
    buffered = GaugeMetricFamily("dagon_mongo_buffered_documents", "Documents waiting to be written to MongoDB")
    buffered.add_metric([], stats.buffered)
    yield buffered
    up = GaugeMetricFamily("dagon_mongo_up", "1 when the last attempt to write to MongoDB succeeded")
    up.add_metric([], 1 if stats.up else 0)
    yield up
    written = CounterMetricFamily("dagon_mongo_written_documents", "Documents written to MongoDB")
    written.add_metric([], stats.written)
    yield written
    dropped = CounterMetricFamily("dagon_mongo_dropped_documents", "Documents lost (buffer full or refused)")
    dropped.add_metric([], stats.dropped)
    yield dropped
    failures = CounterMetricFamily("dagon_mongo_failures", "Failed attempts to write to MongoDB (each retried)")
    failures.add_metric([], stats.failures)
    yield failures
