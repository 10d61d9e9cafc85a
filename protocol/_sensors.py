"""Sensor sources and actuator targets: the URL syntax shared by workflows (placement) and agents (I/O).

| URL | what | device an agent must announce |
|---|---|---|
| ``serial:///dev/ttyACM0?baud=9600`` | lines from a serial port (pyserial-asyncio) | ``serial:/dev/ttyACM0`` |
| ``iio:///sys/bus/iio/devices/iio:device0`` | an IIO device's channels | ``iio:/sys/bus/iio/devices/iio:device0`` |
| ``iio://dht11`` | the IIO device whose ``name`` is ``dht11`` | ``iio:dht11`` |
| ``i2c://1/0x76?register=0xf7&length=8`` | a register block of an I²C device (smbus2) | ``i2c:1`` (the bus) |
| ``mqtt://sensors/dht/+`` | messages a sensor publishes to the broker | none (any agent) |
| ``sysfs:///sys/class/leds/led0/brightness`` | (actuators only) a sysfs attribute | none: pin it with labels |

Query options: ``baud`` (serial, default 9600), ``channels`` (iio, comma-separated attribute
names; default every ``*_input`` and ``*_raw`` channel), ``register`` and ``length`` (i2c).
Anything else is an error naming the option, so a typo never silently reads the wrong thing.
No I/O happens here.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

from dagon.protocol._errors import ConfigError

__all__ = ["SENSOR_SCHEMES", "SensorSource", "parse_source"]

SENSOR_SCHEMES: Final = ("serial", "iio", "i2c", "mqtt")
ACTUATOR_SCHEMES: Final = ("serial", "i2c", "mqtt", "sysfs")
_OPTIONS: Final = {
    "serial": {"baud"},
    "iio": {"channels"},
    "i2c": {"register", "length"},
    "mqtt": set(),
    "sysfs": set(),
}
_BAUDS: Final = frozenset({300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800,
                           500000, 921600, 1000000})  # fmt: skip
_IIO_NAME: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


@dataclass(frozen=True, slots=True)
class SensorSource:
    """A parsed source or target.

    Attributes:
        url: as written.
        scheme: ``serial``, ``iio``, ``i2c``, ``mqtt`` or ``sysfs``.
        path: device path (serial, iio by path, sysfs), IIO device name (iio by name) or MQTT topic.
        bus, address: I²C bus number and 7-bit address.
        options: the validated query options.
    """

    url: str
    scheme: str
    path: str = ""
    bus: int = -1
    address: int = -1
    options: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str:
        """What an agent must announce to be given this source ("" for any agent)."""
        if self.scheme == "serial":
            return f"serial:{self.path}"
        if self.scheme == "iio":
            return f"iio:{self.path}"
        if self.scheme == "i2c":
            return f"i2c:{self.bus}"
        return ""

    @property
    def baud(self) -> int:
        return int(self.options.get("baud", "9600"))

    @property
    def channels(self) -> tuple[str, ...]:
        raw = self.options.get("channels", "")
        return tuple(c.strip() for c in raw.split(",") if c.strip())

    @property
    def register(self) -> int | None:
        raw = self.options.get("register")
        return int(raw, 0) if raw is not None else None

    @property
    def length(self) -> int:
        return int(self.options.get("length", "1"), 0)


def _fail(url: str, why: str) -> ConfigError:
    return ConfigError(f"sensor source {url!r}: {why}")


def _query(url: str, scheme: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in _OPTIONS[scheme]:
            known = ", ".join(sorted(_OPTIONS[scheme])) or "none"
            raise _fail(url, f"unknown option {key!r} for {scheme}:// (known: {known})")
        options[key] = value
    return options


def _absolute(url: str, path: str, example: str) -> str:
    if not path.startswith("/") or "\x00" in path or any(part == ".." for part in path.split("/")):
        raise _fail(url, f"the path must be absolute, without '..' (e.g. {example})")
    return path


def parse_source(url: str, *, actuator: bool = False) -> SensorSource:
    """Parse and validate a sensor source (or, with ``actuator``, an actuator target).

    Raises:
        ConfigError: unknown scheme or option, a malformed path, bus, address or baud rate.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"sensor source {url!r}: write it as scheme://…, e.g. serial:///dev/ttyACM0?baud=9600")
    scheme, _, rest = url.partition("://")
    allowed = ACTUATOR_SCHEMES if actuator else SENSOR_SCHEMES
    if scheme not in allowed:
        what = "actuator target" if actuator else "sensor source"
        raise ConfigError(f"{what} {url!r}: scheme {scheme!r} is not one of {', '.join(allowed)}")
    body, _, query = rest.partition("?")  # not urlsplit: '#' is an MQTT wildcard here, not a fragment
    options = _query(url, scheme, query)
    if scheme == "mqtt":
        topic = body
        if not topic or topic.startswith("$") or "\x00" in topic:
            raise _fail(url, "name a topic, e.g. mqtt://sensors/dht11 ($-topics are the broker's)")
        if topic.startswith("dagon/"):
            raise _fail(url, "dagon/… topics are dagon's own; sensors publish elsewhere")
        if actuator and ("+" in topic or "#" in topic):
            raise _fail(url, "an actuator publishes to one topic: no + or # wildcards")
        return SensorSource(url, scheme, path=topic, options=options)
    if scheme == "i2c":
        match = re.fullmatch(r"(\d{1,3})/(0x[0-9a-fA-F]{1,2}|\d{1,3})", body)
        if match is None:
            raise _fail(url, "write i2c://BUS/ADDRESS, e.g. i2c://1/0x76")
        bus, address = int(match.group(1)), int(match.group(2), 0)
        if not 0x03 <= address <= 0x77:
            raise _fail(url, f"I²C address {address:#04x} is outside the 7-bit range 0x03-0x77")
        source = SensorSource(url, scheme, bus=bus, address=address, options=options)
        try:
            register, length = source.register, source.length
        except ValueError:
            raise _fail(url, "register and length must be numbers (0x.. or decimal)") from None
        if register is not None and not 0 <= register <= 0xFF:
            raise _fail(url, f"register {register} is outside 0-255")
        if not 1 <= length <= 32:
            raise _fail(url, f"length {length} is outside 1-32 bytes (one SMBus block)")
        return source
    if scheme == "iio" and body and not body.startswith("/"):
        if not _IIO_NAME.fullmatch(body):
            raise _fail(url, "an IIO device is a sysfs path (iio:///sys/bus/iio/devices/iio:device0) or a name")
        return SensorSource(url, scheme, path=body, options=options)
    examples = {"serial": "serial:///dev/ttyACM0", "iio": "iio:///sys/bus/iio/devices/iio:device0"}
    path = _absolute(url, body, examples.get(scheme, "sysfs:///sys/class/leds/led0/brightness"))
    if scheme == "sysfs" and not path.startswith("/sys/"):
        raise _fail(url, "sysfs targets live under /sys/")
    source = SensorSource(url, scheme, path=path, options=options)
    if scheme == "serial":
        try:
            baud = source.baud
        except ValueError:
            raise _fail(url, f"baud must be a number, got {options.get('baud')!r}") from None
        if baud not in _BAUDS:
            raise _fail(url, f"baud {baud} is not a standard rate ({', '.join(map(str, sorted(_BAUDS)))})")
    return source
