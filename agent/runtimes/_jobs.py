"""Helpers shared by the orchestrator runtimes (Kubernetes, Nomad).

Option checking that names the offending key, object names derived from the
task, cleanup that survives a second cancellation, and output-file plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

__all__ = ["OptionError", "Options", "backoff", "object_name", "read_tail", "run_cleanup", "within"]

_T = TypeVar("_T")
TAIL: Final = 4096


class OptionError(ValueError):
    """A task's ``runtime_options`` cannot be used; the message names the option and the fix."""


class Options:
    """Typed access to a task's ``runtime_options`` that rejects unknown keys up front.

    Args:
        runtime: runtime name used in messages.
        raw: the options as the task sent them.
        known: the option names this runtime understands.
    """

    def __init__(self, runtime: str, raw: Mapping[str, Any], known: frozenset[str]) -> None:
        if not isinstance(raw, Mapping):
            raise OptionError(f"{runtime} runtime_options must be a table, got {type(raw).__name__}")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise OptionError(f"unknown {runtime} option(s) {unknown}; known options: {sorted(known)}")
        self._runtime = runtime
        self._raw = raw

    def _fail(self, key: str, want: str, value: Any) -> OptionError:
        return OptionError(f"{self._runtime} option {key!r} must be {want}, got {value!r}")

    def text(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str | None:
        value = self._raw.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, "a non-empty string", value)
        if choices and value not in choices:
            raise self._fail(key, f"one of {list(choices)}", value)
        return value

    def required(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise OptionError(f"{self._runtime} option {key!r} is required (e.g. runtime_options={{{key!r}: ...}})")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._raw.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def integer(self, key: str, *, minimum: int) -> int | None:
        value = self._raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(key, f"a whole number of at least {minimum}", value)
        return value

    def str_map(self, key: str) -> dict[str, str]:
        value = self._raw.get(key, {})
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self._fail(key, "a table of strings", value)
        return dict(value)

    def paths(self, key: str) -> list[str]:
        value = self._raw.get(key, [])
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) and p.startswith("/") for p in value):
            raise self._fail(key, "a list of absolute paths", value)
        return list(value)


def backoff(attempt: int, *, cap: float = 5.0) -> float:
    """Capped, jittered exponential delay before repeating a request that brought nothing new.

    A well-behaved server makes the request itself wait (watch, blocking query); this only
    keeps a server that answers at once from turning the loop into a busy poll.
    """
    return min(cap, 0.05 * 2.0 ** min(attempt, 10)) * random.uniform(0.5, 1.0)


def object_name(prefix: str, run: str, task: str, attempt: int, *, limit: int) -> str:
    """A DNS-1123 style name (lowercase letters, digits, ``-``) unique to one attempt.

    The readable part comes from the task name; a hash of run, task and attempt
    plus random bits keeps names unique even after truncation or when a
    previous attempt's object still exists.
    """
    readable = re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-") or "task"
    digest = hashlib.sha256(f"{run}\0{task}\0{attempt}".encode()).hexdigest()[:8]
    suffix = f"-{attempt}-{digest}{os.urandom(2).hex()}"
    return f"{prefix}-{readable[: max(1, limit - len(prefix) - 1 - len(suffix))]}".rstrip("-") + suffix


def within(path: Path, root: Path) -> bool:
    """True if ``path`` is ``root`` or below it."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def read_tail(path: Path, size: int = TAIL) -> str:
    """The last ``size`` bytes of a file, decoded leniently ('' if it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


async def run_cleanup(cleanup: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``cleanup`` to its end even if the caller is cancelled (again) meanwhile.

    Used on the way out of a cancellation or a timeout: deleting a pod or
    purging a job must not be abandoned half way.
    """
    fut = asyncio.ensure_future(cleanup())
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(fut)
    return fut.result()
