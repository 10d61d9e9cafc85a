"""The python runtime: importable callables on a worker pool.

Pure-Python steps (and no-op benchmarks) avoid a fork per task. A thread pool
is the default; ``python_pool = "process"`` isolates CPU-bound steps in worker
processes. A timed-out call in a thread cannot be killed: the task is reported
as timed out and its thread finishes in the background.
"""

from __future__ import annotations

import asyncio
import importlib
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Final

import msgpack

from dagon.agent.runtimes._base import Outcome
from dagon.protocol import ProtocolError, ResultStatus, check_plain

__all__ = ["PythonRuntime", "resolve_callable"]

MAX_VALUE_BYTES: Final = 64 * 1024


def resolve_callable(path: str) -> Callable[..., Any]:
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"{path!r} is not 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target  # type: ignore[no-any-return]


def _call(path: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[bool, Any]:
    """Runs in the worker: (True, value) or (False, formatted traceback)."""
    try:
        func = resolve_callable(path)
    except Exception as exc:
        return False, f"ImportError: cannot load {path}: {exc}"
    try:
        return True, func(*args, **kwargs)
    except Exception:
        return False, traceback.format_exc()


class PythonRuntime:
    def __init__(self, *, pool: str, workers: int) -> None:
        self._executor: Executor = (
            ProcessPoolExecutor(max_workers=workers)
            if pool == "process"
            else ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dagon-python")
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(
        self, path: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, time_limit: float | None
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, _call, path, args, dict(kwargs))
        done, _ = await asyncio.wait([fut], timeout=time_limit)
        if not done:
            fut.cancel()
            return Outcome(ResultStatus.TIMEOUT, None, error=f"still running after the {time_limit:g} s timeout")
        ok, value = fut.result()
        if not ok:
            text = str(value)
            if text.startswith("ImportError: cannot load"):
                return Outcome(ResultStatus.ERROR, None, error=text)
            return Outcome(ResultStatus.FAILED, 1, stderr_tail=text[-4096:])
        if value is not None:
            try:
                check_plain(value, "return value")
                packed = msgpack.packb(value, use_bin_type=True)
            except (ProtocolError, TypeError, ValueError) as exc:
                return Outcome(ResultStatus.ERROR, 0, error=f"return value of {path} is not serialisable: {exc}")
            if len(packed) > MAX_VALUE_BYTES:
                return Outcome(
                    ResultStatus.ERROR,
                    0,
                    error=f"return value of {path} is {len(packed)} bytes, over {MAX_VALUE_BYTES};"
                    " write a file instead",
                )
        return Outcome(ResultStatus.SUCCEEDED, 0, value=value)
