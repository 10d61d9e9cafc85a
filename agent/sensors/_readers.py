"""Reading devices: one async iterator of raw readings per kind of source.

Every reader owns its device for the life of the iterator and releases it when the
iterator is closed (also on cancellation). Blocking calls — opening a port, sysfs and
SMBus reads — run in a worker thread, never on the event loop. A device that is missing
or cannot be opened raises :class:`DeviceError` at once, naming the device and the cause;
a read that fails once is retried at the next period, and :data:`MAX_CONSECUTIVE_ERRORS`
failures in a row end the task with the last cause.

Raw readings are ``str`` (serial lines, MQTT payloads) or ``dict`` (IIO channels, I²C bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, Final, Protocol

from dagon.agent.sensors._devices import iio_devices
from dagon.protocol import SensorSource

__all__ = [
    "IIO_ROOT",
    "MAX_CONSECUTIVE_ERRORS",
    "DeviceError",
    "MqttFeed",
    "SMBusLike",
    "i2c_reader",
    "iio_reader",
    "mqtt_reader",
    "open_smbus",
    "read_iio_channels",
    "resolve_iio",
    "serial_reader",
    "write_i2c",
    "write_serial",
]

MAX_CONSECUTIVE_ERRORS: Final = 5
IIO_ROOT: Final = Path("/sys/bus/iio/devices")
MAX_LINE: Final = 64 * 1024  # a serial "line" longer than this is noise, not a reading


class DeviceError(Exception):
    """The device is missing, cannot be opened, or keeps failing (the message says which and why)."""


def _cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or errno.errorcode.get(exc.errno, exc.errno)} (errno {exc.errno})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- serial ------------------------------------------------------------------------------------


async def serial_reader(source: SensorSource) -> AsyncGenerator[str, None]:
    """Lines from a serial port at ``source.baud`` (8N1), decoded as UTF-8 (bad bytes replaced)."""
    try:
        import serial
        import serial_asyncio
    except ImportError:
        raise DeviceError(
            "serial sources need pyserial-asyncio on the agent: pip install 'dagon-engine[device]'"
        ) from None

    def open_port() -> Any:
        if not Path(source.path).exists():
            raise DeviceError(f"serial port {source.path} does not exist (is the device plugged in?)")
        # exclusive: a second capture of the same port fails clearly instead of stealing half the lines
        port = serial.Serial(source.path, source.baud, timeout=0, exclusive=True)
        port.reset_input_buffer()  # bytes queued before the capture are not readings of it
        return port

    try:
        port = await asyncio.to_thread(open_port)
    except (serial.SerialException, OSError) as exc:
        raise DeviceError(f"cannot open serial port {source.path}: {exc}") from None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await serial_asyncio.connection_for_serial(loop, lambda: protocol, port)
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                raise DeviceError(f"serial port {source.path} closed (device unplugged?)") from exc
            except asyncio.LimitOverrunError:
                await reader.read(MAX_LINE)  # drop the runaway line
                continue
            except (OSError, serial.SerialException) as exc:
                raise DeviceError(f"reading serial port {source.path} failed: {_cause(exc)}") from None
            yield line.decode("utf-8", errors="replace").rstrip("\r\n")
    finally:
        transport.close()


async def write_serial(source: SensorSource, data: bytes) -> None:
    """Open the port, write ``data``, wait until it left, close."""
    try:
        import serial
    except ImportError:
        raise DeviceError("serial targets need pyserial on the agent: pip install 'dagon-engine[device]'") from None

    def write() -> None:
        with serial.Serial(source.path, source.baud, timeout=5, write_timeout=10) as port:
            port.write(data)
            port.flush()

    try:
        await asyncio.to_thread(write)
    except (serial.SerialException, OSError) as exc:
        raise DeviceError(f"cannot write to serial port {source.path}: {exc}") from None


# -- IIO (Linux industrial I/O, sysfs) ------------------------------------------------------------


def resolve_iio(source: SensorSource, root: Path = IIO_ROOT) -> Path:
    """The device directory of an ``iio://`` source (by path, or by ``name`` under ``root``)."""
    if source.path.startswith("/"):
        path = Path(source.path)
    else:
        found = iio_devices(root)
        if source.path not in found:
            names = ", ".join(sorted(found)) or "none"
            raise DeviceError(f"no IIO device named {source.path!r} under {root} (found: {names})")
        path = found[source.path]
    if not path.is_dir():
        raise DeviceError(f"IIO device {path} does not exist (driver not loaded? check dtoverlay / modprobe)")
    return path


def _channel_files(device: Path, wanted: tuple[str, ...]) -> list[str]:
    if wanted:
        missing = [c for c in wanted if not (device / c).is_file()]
        if missing:
            raise DeviceError(f"IIO device {device} has no channel(s) {missing}")
        return list(wanted)
    names = sorted(p.name for p in device.iterdir() if p.name.startswith("in_") and p.name.endswith(("_input", "_raw")))
    if not names:
        raise DeviceError(f"IIO device {device} has no in_*_input or in_*_raw channels")
    return names


def _read_number(path: Path) -> float:
    return float(path.read_text().strip())


def _scaled(device: Path, channel: str, raw: float) -> float:
    """``(raw + offset) * scale`` per the IIO ABI; per-channel files win over the shared ones."""
    stem = channel.removesuffix("_raw")
    shared = stem.rstrip("0123456789")

    def first(suffix: str, default: float) -> float:
        for name in (f"{stem}_{suffix}", f"{shared}_{suffix}"):
            if (device / name).is_file():
                return _read_number(device / name)
        return default

    return (raw + first("offset", 0.0)) * first("scale", 1.0)


def read_iio_channels(device: Path, channels: list[str]) -> dict[str, float]:
    """One reading of every channel (blocking: run it in a thread)."""
    reading: dict[str, float] = {}
    for channel in channels:
        value = _read_number(device / channel)
        key = channel.removeprefix("in_")  # in_temp_input → temp (values in the IIO ABI's units)
        if channel.endswith("_raw"):
            reading[key.removesuffix("_raw")] = _scaled(device, channel, value)
        else:
            reading[key.removesuffix("_input")] = value
    return reading


async def iio_reader(source: SensorSource, every: float, root: Path = IIO_ROOT) -> AsyncGenerator[dict[str, Any], None]:
    """Every ``every`` seconds, the device's channels (``*_input`` as is, ``*_raw`` scaled)."""
    device = await asyncio.to_thread(resolve_iio, source, root)
    channels = await asyncio.to_thread(_channel_files, device, source.channels)
    async for reading in _polled(lambda: read_iio_channels(device, channels), every, f"IIO device {device}"):
        yield reading


async def _polled(read: Callable[[], Any], every: float, what: str) -> AsyncGenerator[Any, None]:
    failures = 0
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        try:
            value = await asyncio.to_thread(read)
        except FileNotFoundError as exc:
            raise DeviceError(f"{what} is gone: {_cause(exc)}") from None
        except (OSError, ValueError) as exc:
            # Sensors such as the DHT11 fail single reads (EIO, ETIMEDOUT) in normal operation.
            failures += 1
            if failures >= MAX_CONSECUTIVE_ERRORS:
                raise DeviceError(f"{what}: {failures} reads in a row failed, the last with {_cause(exc)}") from None
        else:
            failures = 0
            yield value
        next_at += every
        await asyncio.sleep(max(0.0, next_at - loop.time()))


# -- I²C (SMBus, smbus2) -------------------------------------------------------------------------


class SMBusLike(Protocol):
    """The part of ``smbus2.SMBus`` the readers use."""

    def read_byte(self, i2c_addr: int) -> int: ...
    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...
    def write_byte(self, i2c_addr: int, value: int) -> None: ...
    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...
    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None: ...
    def close(self) -> None: ...


def open_smbus(bus: int) -> SMBusLike:
    """``smbus2.SMBus(bus)`` (``/dev/i2c-<bus>``)."""
    try:
        from smbus2 import SMBus
    except ImportError:
        raise DeviceError("i2c sources need smbus2 on the agent: pip install 'dagon-engine[device]'") from None
    try:
        return SMBus(bus)
    except OSError as exc:
        raise DeviceError(f"cannot open I²C bus /dev/i2c-{bus}: {_cause(exc)} (is i2c enabled? raspi-config)") from None


async def i2c_reader(
    source: SensorSource, every: float, open_bus: Callable[[int], SMBusLike] = open_smbus
) -> AsyncGenerator[dict[str, Any], None]:
    """Every ``every`` seconds, ``length`` bytes from ``register`` (or one byte) as ``{"bytes": [...]}``."""
    bus = await asyncio.to_thread(open_bus, source.bus)
    register, length = source.register, source.length

    def read() -> dict[str, Any]:
        if register is None:
            return {"bytes": [bus.read_byte(source.address)]}
        return {"bytes": list(bus.read_i2c_block_data(source.address, register, length))}

    try:
        async for reading in _polled(read, every, f"I²C device {source.address:#04x} on bus {source.bus}"):
            yield reading
    finally:
        with contextlib.suppress(OSError):
            bus.close()


async def write_i2c(
    source: SensorSource, value: str | int | float, open_bus: Callable[[int], SMBusLike] = open_smbus
) -> None:
    if isinstance(value, float) and not value.is_integer():
        raise DeviceError(f"an I²C target takes a byte (0-255) or a string, got {value}")
    data = list(value.encode()) if isinstance(value, str) else [int(value)]
    if any(not 0 <= b <= 255 for b in data) or not 1 <= len(data) <= 32:
        raise DeviceError(f"an I²C write is 1-32 bytes of 0-255, got {value!r}")

    def write() -> None:
        bus = open_bus(source.bus)
        try:
            if source.register is None:
                for b in data:
                    bus.write_byte(source.address, b)
            elif len(data) == 1:
                bus.write_byte_data(source.address, source.register, data[0])
            else:
                bus.write_i2c_block_data(source.address, source.register, data)
        finally:
            bus.close()

    try:
        await asyncio.to_thread(write)
    except OSError as exc:
        raise DeviceError(f"I²C write to {source.address:#04x} on bus {source.bus} failed: {_cause(exc)}") from None


# -- MQTT (a sensor publishing to the agent's broker) -----------------------------------------------


class MqttFeed(Protocol):
    """The agent side of ``mqtt://`` sources: subscriptions on the agent's own broker connection."""

    async def open(self, topic: str) -> asyncio.Queue[tuple[str, bytes]]: ...
    async def close(self, topic: str, queue: asyncio.Queue[tuple[str, bytes]]) -> None: ...


async def mqtt_reader(source: SensorSource, feed: MqttFeed | None) -> AsyncGenerator[str, None]:
    """Each message's payload on the topic filter, as text."""
    if feed is None:
        raise DeviceError("mqtt sources need the agent's broker connection (not available here)")
    queue = await feed.open(source.path)
    try:
        while True:
            _topic, payload = await queue.get()
            yield payload.decode("utf-8", errors="replace")
    finally:
        await feed.close(source.path, queue)
