"""Power from outside the node: a smart plug on an MQTT topic, a Prometheus query, or a CPU model."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
import urllib.request
from typing import Any

from dagon.agent.power._base import PowerReading, PowerSource

__all__ = ["CpuModelSource", "MqttMeterSource", "PrometheusSource", "parse_meter_payload", "parse_prometheus_vector"]

log = logging.getLogger(__name__)


def parse_meter_payload(payload: bytes) -> float | None:
    """Watts from a smart-plug message, or ``None`` when it carries no power.

    Understands Tasmota ``tele/…/SENSOR`` (``{"ENERGY": {"Power": 12.3, …}}``), Shelly
    Gen2+ ``status/switch:0`` (``{"apower": 12.3, …}``), Shelly Gen1
    ``relay/0/power`` (a bare number) and ``{"power": …}`` / ``{"watts": …}``.
    """
    try:
        doc: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(doc, dict):
        energy = doc.get("ENERGY")
        if isinstance(energy, dict):
            doc = energy
        for key in ("Power", "apower", "power", "watts"):
            value = doc.get(key)
            if isinstance(value, list):  # Tasmota multi-channel meters: one value per channel
                value = sum(v for v in value if isinstance(v, int | float))
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return None
    if isinstance(doc, int | float) and not isinstance(doc, bool):
        return float(doc)
    return None


class MqttMeterSource(PowerSource):
    """The latest reading of an external meter publishing on an MQTT topic (measured).

    The agent subscribes to the topic and hands each payload to :meth:`feed` from its receive
    loop (``TelemetryService.feed``). A reading older than ``max_age`` seconds is stale.
    """

    name = "mqtt"

    def __init__(self, topic: str, *, max_age: float = 120.0) -> None:
        self.topic = topic
        self.max_age = max_age
        self._last: tuple[float, float] | None = None

    def feed(self, payload: bytes, now: float) -> bool:
        watts = parse_meter_payload(payload)
        if watts is None:
            return False
        self._last = (watts, now)
        return True

    async def read(self, now: float, *, cpu_util: float) -> PowerReading | None:
        if self._last is None or now - self._last[1] > self.max_age:
            return None
        return PowerReading(self.name, self._last[0], True, now)


def parse_prometheus_vector(body: bytes) -> float | None:
    """Sum of an instant-vector (or the scalar) answer of ``/api/v1/query``; ``None`` if empty or an error."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        return None
    data = doc.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "vector" and result:
            return sum(float(item["value"][1]) for item in result)
        if kind == "scalar" and result:
            return float(result[1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None


class PrometheusSource(PowerSource):
    """A PromQL query (e.g. a smart-PDU or IPMI exporter metric) evaluated by a Prometheus server."""

    name = "prometheus"

    def __init__(self, url: str, query: str, *, timeout: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"power_prometheus_url must be an http(s) URL, got {url!r}")
        self._url = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
        self._timeout = timeout

    def _get(self) -> bytes:
        with urllib.request.urlopen(self._url, timeout=self._timeout) as resp:
            body: bytes = resp.read()
            return body

    async def read(self, now: float, *, cpu_util: float) -> PowerReading | None:
        try:
            body = await asyncio.to_thread(self._get)
        except OSError as exc:
            log.warning("power query to Prometheus failed: %s", exc)
            return None
        watts = parse_prometheus_vector(body)
        return None if watts is None else PowerReading(self.name, watts, True, now)


class CpuModelSource(PowerSource):
    """Modelled power: ``idle + (max - idle) x utilisation``."""

    name = "model"
    measured = False

    def __init__(self, *, idle_watts: float = 5.0, max_watts: float = 15.0) -> None:
        if not 0 <= idle_watts <= max_watts:
            raise ValueError(f"need 0 <= power_idle_watts <= power_max_watts, got {idle_watts} and {max_watts}")
        self.idle_watts = idle_watts
        self.max_watts = max_watts

    async def read(self, now: float, *, cpu_util: float) -> PowerReading | None:
        util = min(1.0, max(0.0, cpu_util))
        return PowerReading(self.name, self.idle_watts + (self.max_watts - self.idle_watts) * util, False, now)
