"""Sensor and actuator tasks: ``wf.sensor(...)`` and ``wf.actuate(...)`` build them.

A sensor task records readings from a device for a while; an actuator task writes one
value to a device. Both run on an agent's built-in ``sensor`` / ``actuator`` runtimes and
are placed only on an agent that announced the device named by the source (``Task.device``,
see :mod:`dagon.protocol._sensors`); ``mqtt://`` sources and ``sysfs://`` targets name no
device (pin them with ``labels=`` or ``agent=`` when it matters).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

from dagon.core._errors import ValidationError
from dagon.protocol import ConfigError, parse_source

__all__ = ["SENSOR_RUNTIMES", "actuator_task_fields", "sensor_task_fields"]

SENSOR_RUNTIMES: Final = frozenset({"sensor", "actuator"})
_TASK_FIELDS: Final = frozenset({"after", "env", "timeout", "retry", "labels", "agent", "keep", "checkpoint", "arch"})
MIN_EVERY: Final = 0.01
STREAMED: Final = frozenset({"serial", "mqtt"})  # line or message sources: parse gets the text


def _callable_name(func: Callable[..., Any] | str, what: str, task: str) -> str:
    if isinstance(func, str):
        return func
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ValidationError(
            f"task {task!r}: {what} {func!r} is not importable by an agent; pass a module-level function of an"
            " importable module or a 'package.module:function' string",
            tasks=[task],
        )
    return f"{module}:{qualname}"


def _seconds(value: Any, what: str, task: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
        raise ValidationError(
            f"task {task!r}: {what} must be a positive number of seconds, got {value!r}", tasks=[task]
        )
    return float(value)


def _options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - _TASK_FIELDS)
    if unknown:
        raise ValidationError(
            f"task {name!r}: unknown option(s) {unknown}; sensor and actuator tasks take {sorted(_TASK_FIELDS)}",
            tasks=[name],
        )
    return options


def sensor_task_fields(
    name: str,
    source: str,
    *,
    duration: float,
    every: float | None = None,
    parse: Callable[..., Any] | str | None = None,
    count: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The :class:`~dagon.core.Task` fields of a sensor task (see ``Workflow.sensor``)."""
    try:
        parsed = parse_source(source)
    except ConfigError as exc:
        raise ValidationError(f"task {name!r}: {exc}", tasks=[name]) from None
    runtime_options: dict[str, Any] = {"duration": _seconds(duration, "duration", name)}
    if every is not None:
        runtime_options["every"] = _seconds(every, "every", name)
        if runtime_options["every"] < MIN_EVERY:
            raise ValidationError(
                f"task {name!r}: every must be at least {MIN_EVERY} s (faster readings: stream them over serial)",
                tasks=[name],
            )
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValidationError(f"task {name!r}: count must be a whole number >= 1, got {count!r}", tasks=[name])
        runtime_options["count"] = count
    if parse is not None:
        runtime_options["parse"] = _callable_name(parse, "parse", name)
    elif parsed.scheme in STREAMED:
        runtime_options["parse"] = "json" if parsed.scheme == "mqtt" else "raw"
    fields = _options(name, options)
    # Enough time for the capture plus opening the device; a task option overrides it.
    fields.setdefault("timeout", runtime_options["duration"] + 60.0)
    return {"command": source, "runtime": "sensor", "runtime_options": runtime_options, "device": parsed.device,
            **fields}  # fmt: skip


def actuator_task_fields(name: str, target: str, value: Any, **options: Any) -> dict[str, Any]:
    """The :class:`~dagon.core.Task` fields of an actuator task (see ``Workflow.actuate``)."""
    try:
        parsed = parse_source(target, actuator=True)
    except ConfigError as exc:
        raise ValidationError(f"task {name!r}: {exc}", tasks=[name]) from None
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, str | int | float) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValidationError(f"task {name!r}: an actuator writes a string or a number, got {value!r}", tasks=[name])
    fields = _options(name, options)
    fields.setdefault("timeout", 60.0)
    return {"command": target, "runtime": "actuator", "runtime_options": {"value": value}, "device": parsed.device,
            **fields}  # fmt: skip
