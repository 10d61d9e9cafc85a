"""Pluggable power sources: every reading says whether it was measured or modelled."""

from dagon.agent.power._base import PowerReading, PowerSource
from dagon.agent.power._detect import POWER_SOURCES, detect_power_source
from dagon.agent.power._energy import EnergyLedger, TaskEnergy
from dagon.agent.power._external import (
    CpuModelSource,
    MqttMeterSource,
    PrometheusSource,
    parse_meter_payload,
    parse_prometheus_vector,
)
from dagon.agent.power._pmic import PmicSource, parse_pmic_adc
from dagon.agent.power._sysfs import HwmonSource, RaplSource, find_hwmon, find_rapl_zones

__all__ = [
    "POWER_SOURCES",
    "CpuModelSource",
    "EnergyLedger",
    "HwmonSource",
    "MqttMeterSource",
    "PmicSource",
    "PowerReading",
    "PowerSource",
    "PrometheusSource",
    "RaplSource",
    "TaskEnergy",
    "detect_power_source",
    "find_hwmon",
    "find_rapl_zones",
    "parse_meter_payload",
    "parse_pmic_adc",
    "parse_prometheus_vector",
]
