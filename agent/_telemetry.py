"""Node telemetry: a cheap psutil sampler, power readings, energy per task, and their publication.

The sampler keeps one ``psutil.Process`` for the agent itself and differences the
node-wide counters (``cpu_times``, disk and network I/O) between samples, so a
sample costs a handful of ``/proc`` reads — never a scan of all processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from dagon.agent._config import AgentConfig
from dagon.agent._spool import ResultSpool
from dagon.agent.power import EnergyLedger, MqttMeterSource, PowerReading, PowerSource, detect_power_source
from dagon.protocol import (
    CONTENT_TYPE_JSON,
    SCHEMA_TELEMETRY,
    AgentId,
    Codec,
    DagonError,
    TaskResult,
    Telemetry,
    encode_public,
    topics,
)
from dagon.protocol.transport import Transport

__all__ = ["TelemetrySampler", "TelemetryService", "telemetry_message", "telemetry_service"]

log = logging.getLogger(__name__)

PUBLISH_WAIT = 1.0  # seconds a sample waits for the broker before it is spooled instead


def _cpu_busy(a: Any, b: Any) -> float:
    """Busy fraction (0…1) between two ``cpu_times`` tuples."""
    total = sum(b) - sum(a)
    if total <= 0:
        return 0.0
    idle = (b.idle - a.idle) + (getattr(b, "iowait", 0.0) - getattr(a, "iowait", 0.0))
    return float(min(1.0, max(0.0, 1.0 - idle / total)))


class TelemetrySampler:
    """Samples CPU, per-core load, memory, disk, network and temperatures; keeps the last ``history``."""

    def __init__(self, *, disk_path: Path = Path("/"), history: int = 60) -> None:
        self._disk_path = str(disk_path)
        self._proc = psutil.Process()
        self.cpus = psutil.cpu_count() or 1
        self._cpu = psutil.cpu_times()
        self._per_cpu = psutil.cpu_times(percpu=True)
        self._disk = psutil.disk_io_counters()
        self._net = psutil.net_io_counters()
        self._ts = time.time()
        self._proc.cpu_percent(None)  # primes the agent's own CPU figure
        self._temps = hasattr(psutil, "sensors_temperatures")
        self.history: deque[dict[str, Any]] = deque(maxlen=history)

    def sample(self) -> dict[str, Any]:
        """One sample (rates are over the time since the previous one)."""
        now = time.time()
        dt = max(1e-6, now - self._ts)
        cpu, per_cpu = psutil.cpu_times(), psutil.cpu_times(percpu=True)
        util = _cpu_busy(self._cpu, cpu)
        per_core = [round(100 * _cpu_busy(a, b), 1) for a, b in zip(self._per_cpu, per_cpu, strict=False)]
        mem = psutil.virtual_memory()
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        doc: dict[str, Any] = {
            "ts": now,
            "cpu_percent": round(100 * util, 1),
            "cpu_busy_cores": util * self.cpus,
            "per_core_percent": per_core,
            "load_avg": list(os.getloadavg()),
            "memory_used": mem.total - mem.available,
            "memory_total": mem.total,
            "memory_percent": mem.percent,
            "agent_cpu_percent": self._proc.cpu_percent(None),
            "agent_rss": self._proc.memory_info().rss,
        }
        with contextlib.suppress(OSError):
            usage = psutil.disk_usage(self._disk_path)
            doc.update(disk_used=usage.used, disk_total=usage.total)
        if disk is not None and self._disk is not None:
            doc["disk_read_bps"] = (disk.read_bytes - self._disk.read_bytes) / dt
            doc["disk_write_bps"] = (disk.write_bytes - self._disk.write_bytes) / dt
        if net is not None and self._net is not None:
            doc["net_recv_bps"] = (net.bytes_recv - self._net.bytes_recv) / dt
            doc["net_sent_bps"] = (net.bytes_sent - self._net.bytes_sent) / dt
        temps: dict[str, float] = {}
        if self._temps:
            with contextlib.suppress(OSError, AttributeError):
                for chip, entries in psutil.sensors_temperatures().items():
                    for i, entry in enumerate(entries):
                        temps[f"{chip}/{entry.label or i}"] = entry.current
        doc["temperatures"] = temps
        self._cpu, self._per_cpu, self._disk, self._net, self._ts = cpu, per_cpu, disk, net, now
        self.history.append(doc)
        return doc


class TelemetryService:
    """Samples every ``interval`` seconds, reads power, feeds the energy ledger and publishes.

    Public JSON (schema ``dagon.telemetry/1``) goes to ``dagon/v1/agents/{agent}/telemetry/json``.

    Args:
        agent: the agent id.
        interval: seconds between samples.
        power: the power source (``None``: no power figures).
        running: returns the number of tasks running now.
    """

    def __init__(
        self,
        *,
        agent: AgentId,
        interval: float,
        power: PowerSource | None,
        running: Callable[[], int] = lambda: 0,
        disk_path: Path = Path("/"),
    ) -> None:
        self.agent = agent
        self.interval = interval
        self.power = power
        self._running = running
        self.sampler = TelemetrySampler(disk_path=disk_path)
        self.ledger = EnergyLedger()
        self.last_power: PowerReading | None = None
        self.samples = 0
        self.meter_topic = power.topic if isinstance(power, MqttMeterSource) else ""
        self.next_sample_at = time.monotonic()  # when the loop takes its next sample
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Sample (and deliver what was kept while offline) now rather than at the next interval."""
        self._wake.set()

    def feed(self, topic: str, payload: bytes) -> bool:
        """Take an external meter's message; ``False`` when ``topic`` is not the meter's."""
        if not self.meter_topic or topic != self.meter_topic or not isinstance(self.power, MqttMeterSource):
            return False
        self.power.feed(payload, time.time())
        return True

    async def sample_once(self) -> dict[str, Any]:
        doc = await asyncio.to_thread(self.sampler.sample)
        doc["agent"] = self.agent
        reading = None
        if self.power is not None:
            try:
                reading = await self.power.read(doc["ts"], cpu_util=doc["cpu_percent"] / 100)
            except Exception:  # a broken sensor must not stop telemetry
                log.exception("agent %s: reading power from %s failed", self.agent, self.power.name)
        if reading is not None:
            self.last_power = reading
            self.ledger.add(
                reading.ts, reading.watts, busy_cores=doc["cpu_busy_cores"], running=self._running(),
                measured=reading.measured, source=reading.source,
            )  # fmt: skip
            doc["power"] = {
                "watts": reading.watts, "source": reading.source, "measured": reading.measured,
                "detail": reading.detail, "energy_joules_total": self.ledger.total_joules,
            }  # fmt: skip
        else:
            doc["power"] = None
        self.samples += 1
        return doc

    def annotate(self, result: TaskResult) -> TaskResult:
        """``result`` with the energy attributed to it (unchanged when no power is known)."""
        energy = self.ledger.attribute(result.started_at, result.finished_at, result.cpu_time)
        if energy is None:
            return result
        return dataclasses.replace(
            result,
            energy_joules=energy.joules,
            power_watts=energy.watts,
            energy_measured=energy.measured,
            energy_source=energy.source,
        )

    async def sample_loop(
        self,
        transport: Transport,
        codec: Codec | None = None,
        spool: ResultSpool | None = None,
        ride: Callable[[Telemetry], None] | None = None,
    ) -> None:
        """Sample and publish forever (until cancelled).

        With ``codec``, each sample also goes to the coordinators as a signed msgpack
        :class:`~dagon.protocol.Telemetry` on the agent's internal telemetry topic — given to
        ``ride`` instead when there is one (the agent's heartbeat carries it: ``dagon.agent._beat``).
        With a ``spool``, public samples that cannot be published (the broker is unreachable)
        are kept there and published in order, before newer ones, once it is back.
        """
        topic = topics.agent_telemetry_json(self.agent)
        internal = topics.agent_telemetry(self.agent)
        while True:
            doc = await self.sample_once()
            doc["schema"] = SCHEMA_TELEMETRY
            payload = encode_public(doc)
            if spool is None:
                try:
                    await transport.publish(topic, payload, qos=0, content_type=CONTENT_TYPE_JSON)
                except Exception as exc:
                    log.warning("agent %s: telemetry not published: %s", self.agent, exc)
            else:
                await self._deliver(transport, topic, payload, spool)
            if ride is not None:
                ride(telemetry_message(doc, running=self._running()))
            elif codec is not None:
                message = telemetry_message(doc, running=self._running())
                try:  # the latest sample is what counts for coordinators: not spooled
                    async with asyncio.timeout(PUBLISH_WAIT):
                        await transport.publish(internal, codec.encode(message), qos=0)
                except Exception as exc:
                    log.debug("agent %s: telemetry message not sent: %s", self.agent, exc)
            self.next_sample_at = time.monotonic() + self.interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def _deliver(self, transport: Transport, topic: str, payload: bytes, spool: ResultSpool) -> None:
        if not spool.telemetry_backlog:
            if not await _publish(transport, topic, payload, qos=0):
                await spool.add_telemetry(payload)
            return
        await spool.add_telemetry(payload)  # behind the older ones: delivered in order
        while spool.telemetry_backlog:
            rows = await spool.telemetry_head(100)
            last = None
            for seq, data in rows:
                if not await _publish(transport, topic, data, qos=1):  # acknowledged: then it may go
                    break
                last = seq
            if last is not None:
                await spool.telemetry_sent(last)
            if last is None or last != rows[-1][0]:
                return  # offline again: the rest waits for the next sample


async def _publish(transport: Transport, topic: str, payload: bytes, *, qos: int) -> bool:
    """Publish unless the broker is unreachable for longer than ``PUBLISH_WAIT``."""
    try:
        async with asyncio.timeout(PUBLISH_WAIT):
            await transport.publish(topic, payload, qos=qos, content_type=CONTENT_TYPE_JSON)
    except (TimeoutError, DagonError):
        return False
    return True


def telemetry_message(doc: dict[str, Any], *, running: int = 0) -> Telemetry:
    """The wire message for one sample of :meth:`TelemetryService.sample_once`.

    Rates are clamped at 0: a counter that went backwards (a device removed, a wrap) would
    otherwise make the coordinator refuse the whole sample as impossible.
    """
    power = doc.get("power") or {}
    return Telemetry(
        agent=AgentId(doc["agent"]),
        sampled_at=float(doc["ts"]),
        cpu_percent=float(doc["cpu_percent"]),
        memory_used=int(doc["memory_used"]),
        memory_total=int(doc["memory_total"]),
        running=running,
        per_core_percent=tuple(float(x) for x in doc.get("per_core_percent", ())),
        load_avg=tuple(float(x) for x in doc.get("load_avg", ())),
        disk_read_bps=max(0.0, float(doc.get("disk_read_bps", 0.0))),
        disk_write_bps=max(0.0, float(doc.get("disk_write_bps", 0.0))),
        net_recv_bps=max(0.0, float(doc.get("net_recv_bps", 0.0))),
        net_sent_bps=max(0.0, float(doc.get("net_sent_bps", 0.0))),
        temperatures={str(k): float(v) for k, v in doc.get("temperatures", {}).items()},
        power_watts=float(power["watts"]) if power else None,
        power_source=str(power.get("source", "")),
        power_measured=bool(power.get("measured", False)),
        energy_joules_total=float(power.get("energy_joules_total", 0.0)),
    )


def telemetry_service(config: AgentConfig, agent: AgentId, running: Callable[[], int]) -> TelemetryService | None:
    """The service ``config`` asks for (``None`` when ``telemetry_interval`` is 0).

    Raises:
        ConfigError: the configured power source is not available or misconfigured.
    """
    if config.telemetry_interval <= 0:
        return None
    power = detect_power_source(
        config.power_source,
        idle_watts=config.power_idle_watts,
        max_watts=config.power_max_watts,
        mqtt_topic=config.power_mqtt_topic,
        prometheus_url=config.power_prometheus_url,
        prometheus_query=config.power_prometheus_query,
    )
    log.info("agent %s: power from %s", agent, power.name if power is not None else "nowhere (off)")
    return TelemetryService(
        agent=agent, interval=config.telemetry_interval, power=power, running=running, disk_path=config.scratch
    )
