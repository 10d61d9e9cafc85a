"""Ctrl-C while a client follows runs: say what really happens to them.

Runs of a standalone coordinator live there, not in this process: interrupting the
client does not stop them. By default the client detaches and says how to cancel them
(``dagon cancel RUN``); asked to (``--cancel-on-interrupt``), it cancels them — through
the coordinator, answered like a submission — and says so. Runs of a coordinator in this
process (``dagon run``) end with it: they are cancelled, so that the agents stop their
tasks (a remote agent would otherwise run them to their end for nobody).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from dagon._client import Client, RunHandle
from dagon._remote import RemoteRuns
from dagon.core import RunState
from dagon.protocol import DagonError, RunId

__all__ = ["Interrupted", "interrupted", "interrupted_run", "unfinished", "until_interrupted"]

T = TypeVar("T")

SETTLE = 0.5  # seconds the in-process coordinator gets to send the cancellations before it stops


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, handled: what became of the runs was said; the CLI exits 130 and adds nothing."""


def unfinished(client: Client, runs: list[RunId]) -> list[RunId]:
    """``runs`` that have not ended (as far as this client knows)."""
    if client.coordinator is not None:
        views = client.coordinator.engine.runs
        return [r for r in runs if r in views and views[r].state is RunState.RUNNING]
    remote = client.runs
    if not isinstance(remote, RemoteRuns):
        return list(runs)
    return [r for r in runs if (remote.status(r) or {}).get("state") in (None, "running")]


async def until_interrupted(step: Coroutine[Any, Any, T]) -> T | None:
    """Await ``step``; on SIGINT (Ctrl-C) cancel it and return None instead of raising KeyboardInterrupt.

    Outside the main thread (no signal handlers there) it is simply awaited.
    """
    loop = asyncio.get_running_loop()
    hit = asyncio.Event()
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, hit.set)
    except (NotImplementedError, RuntimeError, ValueError):
        return await step
    task = asyncio.ensure_future(step)
    stop = asyncio.ensure_future(hit.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)  # asyncio.run's own handler again (a second Ctrl-C)
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if hit.is_set() and (task.cancelled() or not task.done()):
        return None
    return task.result()


async def interrupted_run(client: Client, runs: list[RunId]) -> None:
    """After Ctrl-C on ``dagon run`` (or ``Workflow.run``): detach from a standalone coordinator's
    runs; cancel those of the coordinator in this process, which stops with it. Says which on stderr."""
    if client.coordinator is None:
        await interrupted(client, runs, cancel=False, command="dagon run")
        return
    coordinator = client.coordinator
    for run in unfinished(client, runs):
        await coordinator.cancel(run, "cancelled by Ctrl-C")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await coordinator.wait(run)
        await asyncio.sleep(SETTLE)  # the drive pass that decided it sends the agents' cancellations
        sys.stderr.write(
            f"interrupted: cancelled run {run}; its running tasks are stopped on the agents"
            f" (`dagon resume {run}` runs again what did not succeed)\n"
        )
    sys.stderr.flush()


async def interrupted(client: Client, runs: list[RunId], *, cancel: bool, command: str) -> None:
    """After Ctrl-C: cancel ``runs`` (``cancel``) or detach from them, and say which on stderr."""
    out = sys.stderr
    runs = unfinished(client, runs)
    if not runs:
        out.write(f"interrupted: {command} stopped following; its run(s) had already ended\n")
        return
    broker = f" --broker {client.url}" if client.url else ""
    if not cancel:
        for run in runs:
            out.write(f"detached: run {run} goes on on the coordinator; `dagon cancel {run}{broker}` stops it\n")
        out.flush()
        return

    async def cancelled(run: RunId) -> bool:
        await RunHandle(client, run, "").cancel(f"cancelled by Ctrl-C on {command}")
        return True

    for run in runs:
        try:
            done = await until_interrupted(cancelled(run))
        except DagonError as exc:
            out.write(f"interrupted: run {run} was not cancelled: {exc}\n")
            continue
        if done is None:
            out.write(
                f"interrupted again: the cancellation of run {run} may not have reached the coordinator;"
                f" `dagon cancel {run}{broker}` makes sure\n"
            )
            return
        out.write(f"interrupted: cancelled run {run}; its running tasks are stopped on the agents\n")
    out.flush()
