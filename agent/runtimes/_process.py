"""The process runtime: ``bash -c COMMAND`` in its own process group.

The child is reaped through a pidfd registered with the event loop and
``os.wait4`` — no thread per child — which also yields its real CPU time and
peak RSS. Timeout and cancellation terminate the whole process group (SIGTERM,
then SIGKILL after a grace period) and always reap it, even when the awaiting
task is itself being cancelled. Processes a task leaves running in the
background are killed when it ends (a task cannot outlive its slot); a daemon
that must survive its task has to leave the process group (``setsid``), and still
does not survive the agent (see :mod:`dagon.agent._keeper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from dagon.agent._keeper import Ledger
from dagon.agent.runtimes._base import Outcome
from dagon.protocol import ResultStatus

__all__ = ["KILL_GRACE", "STDERR_TAIL", "RunAs", "run_process"]

KILL_GRACE: Final = 2.0
_T = TypeVar("_T")


class _Child:
    def __init__(self, proc: subprocess.Popen[bytes], ledger: Ledger | None = None) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._ledger = ledger
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self._fd = os.pidfd_open(proc.pid)
        loop.add_reader(self._fd, self._on_exit)
        self._loop = loop

    def _on_exit(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)  # start_new_session: pgid == pid

    async def terminate(self) -> None:
        """SIGTERM the group, SIGKILL it after the grace period; returns once the child exited."""
        self.signal_group(signal.SIGTERM)
        done, _ = await asyncio.wait([self.exited], timeout=KILL_GRACE)
        if not done:
            self.signal_group(signal.SIGKILL)
            await asyncio.wait([self.exited])
        # Leftovers of the group (children that ignored SIGTERM) go too.
        self.signal_group(signal.SIGKILL)

    async def terminate_and_reap(self) -> None:
        """Kill and reap the group even if the caller is cancelled again meanwhile.

        Used on the way out of a cancellation: the caller re-raises it afterwards.
        """
        await _finish(asyncio.ensure_future(self.terminate()))
        self.reap()

    def reap(self) -> tuple[int, float, int]:
        """Exit code (128+N for signal N), CPU seconds, peak RSS bytes.

        Only called once the pidfd said the child exited, so ``wait4`` does not block.
        """
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:  # pragma: no cover - the pidfd was readable, so the child has exited
            _, status, usage = os.wait4(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if self._ledger is not None:  # the group is dead: callers kill it before reaping
            self._ledger.reaped(self.pid)
        self.proc.returncode = code  # so Popen's finaliser does not try to reap again
        if code < 0:
            code = 128 - code
        return code, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


STDERR_TAIL: Final = 4096


def _make_dirs(meta: Path) -> None:
    # Two mkdir calls in the common case (the run directory exists); file-system
    # calls are the dominant per-task cost on slow disks.
    try:
        os.mkdir(meta.parent)
        os.mkdir(meta)
    except FileExistsError:
        meta.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError:
        meta.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True, slots=True)
class RunAs:
    """An unprivileged account tasks run as (the agent itself runs as root)."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        """Raises: KeyError when the user does not exist."""
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _spawn(
    command: str,
    cwd: Path,
    env: Mapping[str, str],
    stdout: Path,
    stderr: Path,
    record: Path | None,
    shown: str,
    run_as: RunAs | None = None,
    ledger: Ledger | None = None,
    label: str = "",
) -> tuple[subprocess.Popen[bytes], int]:
    """Blocking part of a start (directories, files, fork/exec): runs in a worker thread.

    Returns the child and a descriptor of its stderr file, kept open so the tail
    can be read after exit without opening the file again.
    """
    _make_dirs(stdout.parent)
    if record is not None:
        record.write_text(shown)
    identity: dict[str, Any] = {}
    environment = dict(env)
    if run_as is not None:
        # The task owns its working directory and nothing else; its output files
        # are opened here, by the agent, and handed over as descriptors.
        os.chown(cwd, run_as.uid, run_as.gid)
        identity = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
        environment.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    err_fd = os.open(stderr, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with stdout.open("wb") as out:
            proc = subprocess.Popen(
                ["/bin/bash", "-c", command],
                cwd=cwd,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err_fd,
                start_new_session=True,
                close_fds=True,
                **identity,
            )
    except BaseException:
        os.close(err_fd)
        raise
    if ledger is not None:
        ledger.spawned(proc.pid, label)  # what the keeper kills if the agent dies from now on
    return proc, err_fd


async def _finish(fut: asyncio.Future[_T]) -> _T:
    """Wait for ``fut`` through any number of cancellations (the caller is already
    handling one and re-raises it afterwards)."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(fut)
    return fut.result()


def _read_tail(fd: int) -> str:
    try:
        size = os.fstat(fd).st_size
        if not size:
            return ""
        start = max(0, size - STDERR_TAIL)
        return os.pread(fd, size - start, start).decode(errors="replace")
    finally:
        os.close(fd)


async def run_process(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout: Path,
    stderr: Path,
    time_limit: float | None,
    record: Path | None = None,
    record_text: str | None = None,
    run_as: RunAs | None = None,
    ledger: Ledger | None = None,
    label: str = "",
) -> Outcome:
    """Run ``command`` with bash; stdout/stderr go to the given files.

    Directory creation, file opening and fork/exec happen in a worker thread:
    on a busy or slow filesystem they take hundreds of microseconds that the
    event loop should spend on other tasks. ``record`` (if given) receives the
    command text (or ``record_text``, e.g. with secrets left as placeholders).
    ``run_as`` switches the task to that account (the agent must be root).
    ``time_limit`` is the task's own limit: past it the group is
    killed and the outcome is TIMEOUT (not a bound on this call's wait).
    ``ledger`` records the group (``label`` names it) while it lives, so that it does not
    outlive the agent (see :mod:`dagon.agent._keeper`).
    """
    spawning = asyncio.ensure_future(
        asyncio.to_thread(
            _spawn, command, cwd, env, stdout, stderr, record, record_text or command, run_as, ledger, label
        )
    )
    try:
        proc, err_fd = await asyncio.shield(spawning)
    except OSError as exc:
        return Outcome(ResultStatus.ERROR, None, error=f"could not start bash in {cwd}: {exc}")
    except asyncio.CancelledError:
        # Cancelled while the thread was forking: the child may exist; kill and reap it.
        with contextlib.suppress(OSError):
            late, late_fd = await _finish(spawning)
            os.close(late_fd)
            await _Child(late, ledger).terminate_and_reap()
        raise
    child = _Child(proc, ledger)
    status = ResultStatus.SUCCEEDED
    try:
        done, _ = await asyncio.wait([child.exited], timeout=time_limit)
        if not done:
            status = ResultStatus.TIMEOUT
            await child.terminate()
    except asyncio.CancelledError:
        os.close(err_fd)
        await child.terminate_and_reap()
        raise
    # The leader is a zombie until reaped, so its pid (the group id) cannot be reused
    # yet: background processes the task left behind are killed safely here.
    child.signal_group(signal.SIGKILL)
    code, cpu, rss = child.reap()
    tail = _read_tail(err_fd)
    if status is ResultStatus.SUCCEEDED and code != 0:
        status = ResultStatus.FAILED
    error = f"killed after the {time_limit:g} s timeout" if status is ResultStatus.TIMEOUT else ""
    return Outcome(status, code, cpu_time=cpu, max_rss=rss, error=error, stderr_tail=tail)
