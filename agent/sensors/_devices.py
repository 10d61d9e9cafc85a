"""Which sensor devices this machine has: what an agent announces for sensor placement.

Found without touching the devices (no port is opened, no I²C address probed):

* serial ports that are sensors in practice: ``/dev/ttyACM*`` (Arduino, CDC-ACM),
  ``/dev/ttyUSB*`` (USB-serial adapters), ``/dev/ttyAMA*`` and ``/dev/serial0``/``serial1``
  (a Raspberry Pi's UARTs), and the stable names under ``/dev/serial/by-id/`` — never the
  legacy ``/dev/ttyS*`` that every PC has whether or not anything is attached;
* IIO devices under ``/sys/bus/iio/devices/`` (kernel drivers such as ``dht11``, ``bme280``),
  announced by path and by their ``name``;
* I²C buses ``/dev/i2c-N`` (addresses on a bus are not probed: probing can upset devices).

Device strings look like ``serial:/dev/ttyACM0``, ``iio:/sys/bus/iio/devices/iio:device0``,
``iio:dht11``, ``i2c:1`` — the same strings :attr:`dagon.protocol.SensorSource.device` derives
from a task's source.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

from dagon.protocol import ConfigError

__all__ = ["DEVICE_KINDS", "check_device", "find_devices", "iio_devices", "parse_devices"]

DEVICE_KINDS: Final = ("serial", "iio", "i2c")
_SERIAL_GLOBS: Final = ("ttyACM*", "ttyUSB*", "ttyAMA*", "serial0", "serial1")


def check_device(text: str) -> str:
    """Validate one configured device string.

    Raises:
        ConfigError: not ``serial:/path``, ``iio:/path``, ``iio:NAME`` or ``i2c:N``.
    """
    kind, sep, rest = text.partition(":")
    ok = bool(sep and rest) and (
        (kind == "serial" and rest.startswith("/")) or kind == "iio" or (kind == "i2c" and rest.isdigit())
    )
    if not ok:
        raise ConfigError(
            f"device {text!r}: write serial:/dev/ttyACM0, iio:/sys/bus/iio/devices/iio:device0, iio:NAME or i2c:1"
        )
    return text


def parse_devices(value: object) -> tuple[str, ...]:
    """``"serial:/dev/ttyACM0,i2c:1"`` or a TOML list of device strings, validated.

    Raises:
        ConfigError: not a list of strings, or a string that is not a device.
    """
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value if v.strip()]
    else:
        raise ConfigError(f"devices must be a list of device strings or 'a,b', got {value!r}")
    return tuple(check_device(item) for item in items)


def iio_devices(root: Path) -> dict[str, Path]:
    """IIO devices under ``root`` (``/sys/bus/iio/devices``) by their ``name`` and by that name without its
    ``@unit`` suffix (first one wins)."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(root.glob("iio:device*"))
    except OSError:
        return found
    for entry in entries:
        try:
            name = (entry / "name").read_text().strip()
        except OSError:
            name = ""
        if name:
            found.setdefault(name, entry)
            # Device-tree drivers name themselves after their node: dht11@4 (a DHT11 on GPIO 4) is also "dht11".
            found.setdefault(name.split("@", 1)[0], entry)
    return found


def find_devices(*, dev: Path = Path("/dev"), sysfs: Path = Path("/sys"), extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The device strings this machine announces (found ones, then ``extra``), without duplicates."""
    found: list[str] = []
    for pattern in _SERIAL_GLOBS:
        found += [f"serial:{p}" for p in sorted(dev.glob(pattern))]
    by_id = dev / "serial" / "by-id"
    if by_id.is_dir():
        found += [f"serial:{p}" for p in sorted(by_id.iterdir())]
    iio_root = sysfs / "bus" / "iio" / "devices"
    if iio_root.is_dir():
        found += [f"iio:{p}" for p in sorted(iio_root.glob("iio:device*"))]
        found += [f"iio:{name}" for name in iio_devices(iio_root)]
    found += [f"i2c:{p.name.removeprefix('i2c-')}" for p in sorted(dev.glob("i2c-*")) if p.name[4:].isdigit()]
    found += [check_device(d) for d in extra]
    return tuple(dict.fromkeys(found))
