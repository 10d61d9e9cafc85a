"""Turning one line (or message) from a device into one reading: a flat dict of numbers and strings.

Built-in parsers, chosen by name in ``wf.sensor(..., parse=NAME)``:

* ``arduino`` — the DHT11 sketch of the original DAGonStar edge-fog evaluation prints
  ``Humidity: 45.00 %  |  Temperature: 22.00 °C  71.60 °F  |  Heat Index: 21.80 °C``;
  read as ``{"humidity": 45.0, "temp_c": 22.0, "temp_f": 71.6, "heat_index_c": 21.8}``.
  The sketch's other lines (its banner, ``Error reading from DHT11 sensor``) are not
  readings: they are skipped and counted, never recorded as zeros;
* ``json`` — one JSON object per line (non-object values become ``{"value": …}``);
* ``kv`` — ``key=value`` pairs separated by blanks, commas or semicolons
  (``t=21.5 h=40``); numbers become floats;
* ``raw`` — ``{"line": "…"}``: keep the text as it came;
* or ``module:function`` — an importable callable taking the line (``str``) and returning a
  dict, or None to skip the line.

A parser returns ``None`` for a line that carries no reading. A line it cannot make sense
of raises :class:`ParseError` naming the line, and the caller decides (the sensor task skips
it and counts it, and fails only when nothing at all could be parsed).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final

__all__ = ["BUILTIN_PARSERS", "ParseError", "Parser", "parse_arduino", "parse_json", "parse_kv", "resolve_parser"]

Parser = Callable[[str], "dict[str, Any] | None"]


class ParseError(ValueError):
    """A line could not be read as a reading (the message quotes it)."""


_NUM: Final = r"(-?\d+(?:\.\d+)?|nan|inf)"
_ARDUINO: Final = re.compile(
    rf"Humidity:\s*{_NUM}\s*%\s*\|\s*Temperature:\s*{_NUM}\s*°?\s*C\s+{_NUM}\s*°?\s*F"
    rf"(?:\s*\|\s*Heat Index:\s*{_NUM}\s*°?\s*C)?",
    re.IGNORECASE,
)


def _show(line: str) -> str:
    return repr(line if len(line) <= 120 else line[:117] + "...")


def _number(text: str, line: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ParseError(f"not a finite number in {_show(line)}")
    return value


def parse_arduino(line: str) -> dict[str, Any] | None:
    """The original's DHT11 sketch line; its banner and error lines give None."""
    text = line.strip()
    match = _ARDUINO.search(text)
    if match is None:
        if not text or "Humidity" not in text:
            return None  # "Starting DHT11 sensor reading...", "Error reading from DHT11 sensor", noise
        raise ParseError(f"not a DHT line: {_show(line)}")
    h, c, f, hic = match.groups()
    reading = {"humidity": _number(h, line), "temp_c": _number(c, line), "temp_f": _number(f, line)}
    if hic is not None:
        reading["heat_index_c"] = _number(hic, line)
    return reading


def parse_json(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not JSON ({exc.msg}): {_show(line)}") from None
    if isinstance(value, dict):
        return value
    return {"value": value}


_KV_SPLIT: Final = re.compile(r"[\s,;]+")


def parse_kv(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text:
        return None
    reading: dict[str, Any] = {}
    for item in filter(None, _KV_SPLIT.split(text)):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParseError(f"{item!r} is not key=value in {_show(line)}")
        try:
            reading[key] = float(value)
        except ValueError:
            reading[key] = value
    return reading


def parse_raw(line: str) -> dict[str, Any] | None:
    text = line.rstrip("\r\n")
    return {"line": text} if text else None


BUILTIN_PARSERS: Final[dict[str, Parser]] = {
    "arduino": parse_arduino,
    "json": parse_json,
    "kv": parse_kv,
    "raw": parse_raw,
}


def resolve_parser(name: str) -> Parser:
    """A built-in parser by name, or an importable ``module:function``.

    Raises:
        ValueError: unknown name, or the callable cannot be imported.
    """
    if name in BUILTIN_PARSERS:
        return BUILTIN_PARSERS[name]
    if ":" not in name:
        raise ValueError(f"unknown parser {name!r}: use {', '.join(BUILTIN_PARSERS)} or 'package.module:function'")
    from dagon.agent.runtimes import resolve_callable

    try:
        return resolve_callable(name)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"parser {name!r} cannot be loaded on this agent: {type(exc).__name__}: {exc}") from None
