"""The python runtime: importable callables on a worker pool.

Pure-Python steps (and no-op benchmarks) avoid a fork per task. A thread pool
is the default; ``python_pool = "process"`` isolates CPU-bound steps in worker
processes (started by a fork server, never forked from the agent's threads).

Limits of the thread pool: a thread cannot be killed, so a timed-out or
cancelled call is *reported* as TIMEOUT / CANCELLED at once but keeps its
worker until it returns by itself.
"""

from __future__ import annotations

import asyncio
import importlib
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Final, Literal

import msgpack

from dagon.agent.runtimes._base import Outcome
from dagon.protocol import ProtocolError, ResultStatus, check_plain

__all__ = ["MAX_VALUE_BYTES", "PythonRuntime", "resolve_callable"]

MAX_VALUE_BYTES: Final = 64 * 1024
_TAIL: Final = 4096

_Kind = Literal["ok", "load", "raised"]


def resolve_callable(path: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (the function may be ``Class.method``).

    Raises:
        ValueError: ``path`` does not have that form.
        ImportError, AttributeError: the module or attribute does not exist.
        TypeError: the attribute is not callable.
    """
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"{path!r} is not 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target  # type: ignore[no-any-return]


def _call(path: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[_Kind, Any]:
    """Runs in the worker: ``("ok", value)``, ``("load", message)`` or ``("raised", traceback)``."""
    try:
        func = resolve_callable(path)
    except Exception as exc:
        return "load", f"cannot load {path}: {type(exc).__name__}: {exc}"
    try:
        return "ok", func(*args, **kwargs)
    except BaseException:  # SystemExit and KeyboardInterrupt from user code end the task, not the agent
        return "raised", traceback.format_exc()


def _check_value(path: str, value: Any) -> str:
    """Empty if ``value`` can travel in a TaskResult, else why not."""
    try:
        check_plain(value, "return value")
        size = len(msgpack.packb(value, use_bin_type=True))
    except (ProtocolError, TypeError, ValueError, OverflowError) as exc:
        return f"return value of {path} cannot be sent to the coordinator: {exc}"
    if size > MAX_VALUE_BYTES:
        return (
            f"return value of {path} is {size} bytes, over the {MAX_VALUE_BYTES // 1024} KiB limit;"
            " write it to a file and return its name instead"
        )
    return ""


class PythonRuntime:
    """Runs ``module:function`` callables on a worker pool.

    Args:
        pool: ``"thread"`` or ``"process"``.
        workers: pool size.
    """

    def __init__(self, *, pool: str, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._executor: Executor
        if pool == "process":
            # Imported here: an agent with the default thread pool never loads multiprocessing.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("forkserver")
            self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        elif pool == "thread":
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dagon-python")
        else:
            raise ValueError(f"pool must be 'thread' or 'process', got {pool!r}")

    def close(self) -> None:
        """Stop the pool without waiting for calls still running (threads finish in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(
        self, path: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, time_limit: float | None
    ) -> Outcome:
        """Call ``path(*args, **kwargs)`` in the pool and describe how it ended.

        Returns:
            SUCCEEDED with the value; FAILED (exit code 1, traceback tail) if it raised;
            ERROR if it cannot be loaded or its value cannot be sent; TIMEOUT past ``time_limit``.
        """
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, _call, path, tuple(args), dict(kwargs))
        try:
            done, _ = await asyncio.wait([fut], timeout=time_limit)
        except asyncio.CancelledError:
            fut.cancel()  # drops it if still queued; a running call cannot be stopped
            raise
        if not done:
            fut.cancel()
            return Outcome(
                ResultStatus.TIMEOUT,
                None,
                error=f"{path} still running after the {time_limit:g} s timeout (its worker thread runs on)",
            )
        kind, value = fut.result()
        if kind == "load":
            return Outcome(ResultStatus.ERROR, None, error=str(value))
        if kind == "raised":
            text = str(value)
            last = text.rstrip().rsplit("\n", 1)[-1]
            return Outcome(ResultStatus.FAILED, 1, error=f"{path} raised {last}", stderr_tail=text[-_TAIL:])
        if value is not None and (problem := _check_value(path, value)):
            return Outcome(ResultStatus.ERROR, 0, error=problem)
        return Outcome(ResultStatus.SUCCEEDED, 0, value=value)
