"""The ``sensor`` and ``actuator`` runtimes: device I/O inside the agent, no process per task.

A sensor attempt reads its source until ``duration`` ends (or ``count`` readings), and for
each reading appends one JSON object to ``readings.jsonl`` in the task directory — flushed
line by line, so a ``tail -f`` or a crash keeps everything read so far — and publishes it,
best effort (QoS 0, never waiting for the broker), as ``dagon.reading/1`` JSON on
``dagon/v1/runs/{run}/tasks/{task}/readings``.

It fails — never reports success without data, unlike the original's capture scripts — when
the device is missing or cannot be opened, when it keeps failing, or when the whole capture
produced no reading at all (the error says how many lines could not be parsed and quotes
the last one).

An actuator attempt writes its value once: a marker in ``.dagon/actuated`` is written (and
synced) *before* the device write, so an attempt delivered again (a restarted agent, a
duplicate MQTT delivery) never writes twice — at most once per attempt id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from dagon.agent.runtimes import Execution, Outcome, Runtime
from dagon.agent.sensors._parsers import BUILTIN_PARSERS, ParseError, Parser, resolve_parser
from dagon.agent.sensors._readers import (
    IIO_ROOT,
    DeviceError,
    MqttFeed,
    SMBusLike,
    i2c_reader,
    iio_reader,
    mqtt_reader,
    open_smbus,
    serial_reader,
    write_i2c,
    write_serial,
)
from dagon.protocol import SCHEMA_READING, ConfigError, ResultStatus, SensorSource, encode_public, parse_source, topics

__all__ = ["READINGS_FILE", "ActuatorRuntime", "Publish", "SensorRuntime"]

log = logging.getLogger(__name__)

READINGS_FILE: Final = "readings.jsonl"
BUILTIN: Final = frozenset(BUILTIN_PARSERS.values())
DEFAULT_EVERY: Final = 1.0
MIN_EVERY: Final = 0.01  # polling faster than 100 Hz through sysfs or SMBus only burns the CPU
Publish = Callable[[str, bytes], None]  # topic, JSON payload; must not block


def _number(options: Any, key: str, default: float | None) -> float | None:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"runtime option {key} must be a positive number, got {value!r}")
    if key == "every" and value < MIN_EVERY:
        raise ConfigError(f"runtime option every must be at least {MIN_EVERY} s (faster: stream it over serial)")
    return float(value)


@dataclass(frozen=True, slots=True)
class _Where:
    run: str
    task: str
    attempt: int
    topic: str


class _Capture:
    """Counts and the open readings file of one attempt."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.readings = 0
        self.skipped = 0
        self.last_skipped = ""
        self.first = 0.0
        self.last = 0.0


class SensorRuntime(Runtime):
    """Records readings (see the module docstring).

    Args:
        agent: this agent's id (named in the live readings).
        publish: hands a live reading to the broker without waiting (None: no live readings).
        feed: the agent's subscriptions for ``mqtt://`` sources.
        iio_root: where IIO devices are looked up by name.
        open_bus: opens an I²C bus (``smbus2.SMBus`` by default).
    """

    name = "sensor"

    async def run(self, execution: Execution) -> Outcome:
        return await _within_timeout(self._run(execution), execution)

    def __init__(
        self,
        *,
        agent: str,
        publish: Publish | None = None,
        feed: MqttFeed | None = None,
        iio_root: Path = IIO_ROOT,
        open_bus: Callable[[int], SMBusLike] = open_smbus,
    ) -> None:
        self._agent = agent
        self._publish = publish
        self._feed = feed
        self._iio_root = iio_root
        self._open_bus = open_bus

    def _reader(self, source: SensorSource, every: float | None) -> AsyncGenerator[Any, None]:
        if source.scheme == "serial":
            return serial_reader(source)
        if source.scheme == "iio":
            return iio_reader(source, every or DEFAULT_EVERY, self._iio_root)
        if source.scheme == "i2c":
            return i2c_reader(source, every or DEFAULT_EVERY, self._open_bus)
        return mqtt_reader(source, self._feed)

    async def _run(self, execution: Execution) -> Outcome:
        a = execution.assignment
        try:
            source = parse_source(execution.command)
            options = a.runtime_options
            duration = _number(options, "duration", None)
            if duration is None:
                raise ConfigError("a sensor task needs runtime option duration (seconds)")
            every = _number(options, "every", None)
            count = options.get("count")
            parser = resolve_parser(str(options["parse"])) if options.get("parse") else None
        except (ConfigError, ValueError) as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        where = _Where(run=a.run, task=a.task, attempt=a.attempt, topic=topics.run_task_readings(a.run, a.task))
        path = execution.workdir / READINGS_FILE
        began = time.monotonic()
        try:
            out = path.open("a", encoding="utf-8")
        except OSError as exc:
            return Outcome(ResultStatus.ERROR, None, error=f"cannot write {path}: {exc}")
        capture = _Capture(out)
        try:
            await self._capture(source, parser, capture, duration, every, count, where)
        except DeviceError as exc:
            return Outcome(ResultStatus.FAILED, None, error=f"{exc} (after {capture.readings} reading(s))")
        except OSError as exc:
            return Outcome(ResultStatus.ERROR, None, error=f"cannot write {path}: {exc}")
        finally:
            out.close()
        summary = {
            "readings": capture.readings, "skipped": capture.skipped, "file": READINGS_FILE, "source": source.url,
            "seconds": round(time.monotonic() - began, 3), "first_ts": capture.first, "last_ts": capture.last,
        }  # fmt: skip
        if capture.readings == 0:
            why = (
                f"; {capture.skipped} line(s) could not be read, the last: {capture.last_skipped!r}"
                if capture.skipped
                else ""
            )
            return Outcome(
                ResultStatus.FAILED, None, value=summary,
                error=f"no readings from {source.url} in {duration:g} s{why}",
            )  # fmt: skip
        return Outcome(ResultStatus.SUCCEEDED, 0, value=summary)

    async def _capture(
        self,
        source: SensorSource,
        parser: Parser | None,
        capture: _Capture,
        duration: float,
        every: float | None,
        count: Any,
        where: _Where,
    ) -> None:
        streamed = source.scheme in ("serial", "mqtt")
        keep_after = 0.0
        try:
            async with asyncio.timeout(duration), contextlib.aclosing(self._reader(source, every)) as readings:
                async for raw in readings:
                    now = time.time()
                    if streamed and every and time.monotonic() < keep_after:
                        continue
                    try:
                        if parser is None:
                            reading = raw
                        elif parser in BUILTIN:
                            reading = parser(raw)
                        else:  # a user's function may block or be slow: never on the agent's loop
                            reading = await asyncio.to_thread(parser, raw)
                    except (ParseError, ValueError, TypeError, KeyError) as exc:
                        capture.skipped += 1
                        capture.last_skipped = str(raw)[:200] if streamed else str(exc)[:200]
                        continue
                    except Exception as exc:  # a user's parser: its bug is the task's failure, not the agent's
                        raise DeviceError(f"parser raised {type(exc).__name__}: {exc}") from None
                    if reading is None:
                        continue
                    if not isinstance(reading, dict):
                        raise DeviceError(f"the parser returned {type(reading).__name__}, not a dict")
                    if streamed and every:
                        keep_after = time.monotonic() + every
                    self._record(capture, now, reading, source, where)
                    if isinstance(count, int) and capture.readings >= count:
                        return
        except TimeoutError:
            return  # the capture window ended: the normal way out

    def _record(
        self, capture: _Capture, now: float, reading: dict[str, Any], source: SensorSource, where: _Where
    ) -> None:
        line = {"ts": now, **reading}
        capture.out.write(json.dumps(line, separators=(",", ":"), default=str) + "\n")
        capture.out.flush()
        capture.readings += 1
        capture.first = capture.first or now
        capture.last = now
        if self._publish is not None:
            doc = {"schema": SCHEMA_READING, "run": where.run, "task": where.task, "attempt": where.attempt,
                   "agent": self._agent, "source": source.url, "seq": capture.readings, "ts": now,
                   "reading": reading}  # fmt: skip
            try:
                self._publish(where.topic, encode_public(doc))
            except Exception:  # live readings are a courtesy; the file is the record
                log.debug("live reading not published on %s", where.topic, exc_info=True)


class ActuatorRuntime(Runtime):
    """Writes one value per attempt (see the module docstring).

    Args:
        publish_acked: publishes to the broker and waits for its acknowledgement (``mqtt://`` targets).
        open_bus: opens an I²C bus.
    """

    name = "actuator"

    async def run(self, execution: Execution) -> Outcome:
        return await _within_timeout(self._run(execution), execution)

    def __init__(
        self,
        *,
        publish_acked: Callable[[str, bytes], Any] | None = None,
        open_bus: Callable[[int], SMBusLike] = open_smbus,
    ) -> None:
        self._publish = publish_acked
        self._open_bus = open_bus

    async def _run(self, execution: Execution) -> Outcome:
        a = execution.assignment
        try:
            target = parse_source(execution.command, actuator=True)
        except ConfigError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        value = a.runtime_options.get("value")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return Outcome(ResultStatus.ERROR, None, error=f"an actuator writes a string or a number, got {value!r}")
        marker = execution.workdir / ".dagon" / "actuated"
        if not await asyncio.to_thread(_claim, marker, f"{a.run}/{a.task}/{a.attempt}"):
            return Outcome(ResultStatus.SUCCEEDED, 0, value={"written": False, "target": target.url,
                                                             "note": "this attempt already wrote"})  # fmt: skip
        text = value if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
        try:
            if target.scheme == "serial":
                await write_serial(target, (text + "\n").encode())
            elif target.scheme == "sysfs":
                await asyncio.to_thread(_write_sysfs, Path(target.path), text)
            elif target.scheme == "i2c":
                await write_i2c(target, value, self._open_bus)
            else:
                if self._publish is None:
                    raise DeviceError("mqtt targets need the agent's broker connection")
                await self._publish(target.path, text.encode())
        except DeviceError as exc:
            return Outcome(ResultStatus.FAILED, None, error=str(exc))
        except OSError as exc:
            return Outcome(ResultStatus.FAILED, None, error=f"writing {target.url} failed: {exc}")
        return Outcome(ResultStatus.SUCCEEDED, 0, value={"written": True, "target": target.url, "value": value})


async def _within_timeout(work: Coroutine[Any, Any, Outcome], execution: Execution) -> Outcome:
    """The task's timeout, enforced (a device call stuck in a worker thread is abandoned, not waited for)."""
    limit = execution.assignment.timeout
    try:
        async with asyncio.timeout(limit):
            return await work
    except TimeoutError:
        return Outcome(
            ResultStatus.TIMEOUT, None, error=f"{execution.command}: still busy after the {limit:g} s timeout"
        )


def _claim(marker: Path, attempt: str) -> bool:
    """Create the marker exclusively (and durably); False if this attempt already claimed it."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"{attempt} {time.time():.3f}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _write_sysfs(path: Path, text: str) -> None:
    if not path.exists():
        raise DeviceError(f"sysfs attribute {path} does not exist")
    try:
        path.write_text(text)
    except OSError as exc:
        raise DeviceError(f"cannot write {text!r} to {path}: {exc.strerror or exc}") from None
