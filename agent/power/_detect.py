"""Choosing the power source: the configured one, or the first that works on this node."""

from __future__ import annotations

from pathlib import Path

from dagon.agent.power._base import PowerSource
from dagon.agent.power._external import CpuModelSource, MqttMeterSource, PrometheusSource
from dagon.agent.power._pmic import PmicSource
from dagon.agent.power._sysfs import HwmonSource, RaplSource, find_hwmon, find_rapl_zones
from dagon.protocol import ConfigError

__all__ = ["POWER_SOURCES", "detect_power_source"]

POWER_SOURCES = ("auto", "rapl", "hwmon", "pmic", "mqtt", "prometheus", "model", "off")


def detect_power_source(
    kind: str = "auto",
    *,
    sysfs: Path = Path("/sys"),
    idle_watts: float = 5.0,
    max_watts: float = 15.0,
    mqtt_topic: str = "",
    prometheus_url: str = "",
    prometheus_query: str = "",
) -> PowerSource | None:
    """Build the power source ``kind``; ``auto`` tries, in order, an MQTT meter or Prometheus query
    when configured, the Pi 5 PMIC, hwmon power sensors (ina2xx included), RAPL, then the CPU model.

    Raises:
        ConfigError: an explicitly requested source is not available or misconfigured.
    """
    if kind not in POWER_SOURCES:
        raise ConfigError(f"power_source must be one of {', '.join(POWER_SOURCES)}, got {kind!r}")
    if kind == "off":
        return None
    if kind == "mqtt" or (kind == "auto" and mqtt_topic):
        if not mqtt_topic:
            raise ConfigError("power_source 'mqtt' needs power_mqtt_topic (the meter's topic)")
        return MqttMeterSource(mqtt_topic)
    if kind == "prometheus" or (kind == "auto" and prometheus_url):
        if not (prometheus_url and prometheus_query):
            raise ConfigError("power_source 'prometheus' needs power_prometheus_url and power_prometheus_query")
        try:
            return PrometheusSource(prometheus_url, prometheus_query)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if kind in ("auto", "pmic") and PmicSource.available():
        return PmicSource()
    if kind in ("auto", "hwmon") and (devices := find_hwmon(sysfs / "class" / "hwmon")):
        return HwmonSource(devices)
    if kind in ("auto", "rapl") and (zones := find_rapl_zones(sysfs / "class" / "powercap")):
        return RaplSource(zones)
    if kind in ("auto", "model"):
        try:
            return CpuModelSource(idle_watts=idle_watts, max_watts=max_watts)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    raise ConfigError(f"power_source {kind!r} is not available on this node; use 'auto' or 'model'")
