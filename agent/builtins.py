"""Callables for the python runtime that ship with dagon (tests, benchmarks, health checks)."""

from __future__ import annotations

import time

__all__ = ["echo", "noop", "sleep"]


def noop() -> None:
    """Do nothing (measures pure scheduling overhead)."""


def sleep(seconds: float) -> None:
    """Block the worker for ``seconds`` (exercises timeouts and slot accounting)."""
    time.sleep(seconds)


def echo(value: object) -> object:
    """Return ``value`` unchanged (round-trips arguments and results through the wire)."""
    return value
