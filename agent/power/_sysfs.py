"""Power sources read from Linux sysfs: powercap/RAPL and hwmon (including the ina2xx driver).

INA219/INA226 sensors are read through the kernel's ``ina2xx`` hwmon driver
(``/sys/class/hwmon/hwmonN/name`` is ``ina219`` or ``ina226``; ``power1_input``
in µW, else ``in1_input`` mV x ``curr1_input`` mA). Direct SMBus register reads
are not implemented: bind the driver (device tree overlay or
``echo ina226 0x40 > /sys/bus/i2c/devices/i2c-1/new_device``) instead.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from dagon.agent.power._base import PowerReading, PowerSource

__all__ = ["HwmonSource", "RaplSource", "find_hwmon", "find_rapl_zones"]

log = logging.getLogger(__name__)

INA_NAMES = ("ina209", "ina219", "ina220", "ina226", "ina230", "ina231", "ina238")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(slots=True)
class _Zone:
    name: str
    energy: Path
    max_range: int
    last_uj: int | None = None
    last_ts: float = 0.0


def find_rapl_zones(root: Path = Path("/sys/class/powercap")) -> list[tuple[str, Path]]:
    """Top-level RAPL zones (``intel-rapl:N``; subzones are part of their package and would count twice)."""
    zones = []
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1 or not (zone / "energy_uj").is_file():
            continue
        name = (zone / "name").read_text().strip() if (zone / "name").is_file() else zone.name
        if _read_int(zone / "energy_uj") is None:  # unreadable (root-only since CVE-2020-8694)
            continue
        zones.append((name, zone))
    return zones


class RaplSource(PowerSource):
    """Intel/AMD RAPL energy counters; power = Δenergy/Δt, counter wrap handled with ``max_energy_range_uj``."""

    name = "rapl"

    def __init__(self, zones: list[tuple[str, Path]]) -> None:
        if not zones:
            raise ValueError("RaplSource needs at least one powercap zone")
        self._zones = [
            _Zone(name, path / "energy_uj", _read_int(path / "max_energy_range_uj") or 0) for name, path in zones
        ]

    def sample(self, now: float) -> PowerReading | None:
        detail: dict[str, float] = {}
        for zone in self._zones:
            uj = _read_int(zone.energy)
            if uj is None:
                continue
            if zone.last_uj is not None and now > zone.last_ts:
                delta = uj - zone.last_uj
                if delta < 0:  # the counter wrapped at max_energy_range_uj
                    delta += zone.max_range + 1 if zone.max_range else 0
                if delta >= 0:
                    detail[zone.name] = delta / 1e6 / (now - zone.last_ts)
            zone.last_uj, zone.last_ts = uj, now
        if not detail:
            return None
        return PowerReading(self.name, sum(detail.values()), True, now, detail)

    async def read(self, now: float, *, cpu_util: float) -> PowerReading | None:
        return await asyncio.to_thread(self.sample, now)


def find_hwmon(root: Path = Path("/sys/class/hwmon")) -> list[Path]:
    """hwmon devices with a power, energy, or (ina2xx) voltage and current channel."""
    found = []
    for dev in sorted(root.glob("hwmon*")):
        name = (dev / "name").read_text().strip() if (dev / "name").is_file() else ""
        has_power = any(dev.glob("power*_input")) or any(dev.glob("power*_average")) or any(dev.glob("energy*_input"))
        has_vi = name in INA_NAMES and (dev / "in1_input").is_file() and (dev / "curr1_input").is_file()
        if has_power or has_vi:
            found.append(dev)
    return found


class HwmonSource(PowerSource):
    """hwmon sensors: ``power*_input``/``power*_average`` (µW), else ``energy*_input`` (µJ) differenced,
    else ``in1_input`` (mV) x ``curr1_input`` (mA) for ina2xx chips."""

    name = "hwmon"

    def __init__(self, devices: list[Path]) -> None:
        if not devices:
            raise ValueError("HwmonSource needs at least one hwmon device")
        self._devices = devices
        self._energy: dict[Path, tuple[int, float]] = {}
        names = {(d / "name").read_text().strip() if (d / "name").is_file() else "" for d in devices}
        self.label = "ina2xx" if names and names <= set(INA_NAMES) else "hwmon"

    def _device_watts(self, dev: Path, now: float) -> float | None:
        for pattern in ("power*_input", "power*_average"):
            values = [v for p in sorted(dev.glob(pattern)) if (v := _read_int(p)) is not None]
            if values:
                return sum(values) / 1e6
        energies = [v for p in sorted(dev.glob("energy*_input")) if (v := _read_int(p)) is not None]
        if energies:
            total = sum(energies)
            last = self._energy.get(dev)
            self._energy[dev] = (total, now)
            if last is not None and now > last[1] and total >= last[0]:
                return (total - last[0]) / 1e6 / (now - last[1])
            return None
        mv, ma = _read_int(dev / "in1_input"), _read_int(dev / "curr1_input")
        if mv is not None and ma is not None:
            return mv / 1000 * ma / 1000
        return None

    def sample(self, now: float) -> PowerReading | None:
        detail: dict[str, float] = {}
        for dev in self._devices:
            watts = self._device_watts(dev, now)
            if watts is not None:
                name = (dev / "name").read_text().strip() if (dev / "name").is_file() else dev.name
                detail[f"{dev.name}:{name}"] = watts
        if not detail:
            return None
        return PowerReading(self.label, sum(detail.values()), True, now, detail)

    async def read(self, now: float, *, cpu_util: float) -> PowerReading | None:
        return await asyncio.to_thread(self.sample, now)
