"""The process runtime on its own: reaping under repeated cancellation, leftovers, rusage."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from dagon.agent.runtimes import Outcome, run_process
from dagon.protocol import ResultStatus

from ._support import wait_for_pid, wait_gone


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not our child any more: the runtime reaped it
    return False


def start(tmp_path: Path, command: str, *, time_limit: float | None = None) -> asyncio.Task[Outcome]:
    meta = tmp_path / "work" / ".dagon"
    coro = run_process(
        command,
        cwd=tmp_path / "work",
        env=dict(os.environ),
        stdout=meta / "stdout",
        stderr=meta / "stderr",
        time_limit=time_limit,
    )
    return asyncio.ensure_future(coro)


async def test_cancelled_twice_still_kills_and_reaps(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # The leader ignores SIGTERM: the SIGKILL after the grace period is what ends it.
    task = start(tmp_path, f"trap '' TERM; echo $$ > {pid_file}; sleep 100 & wait; sleep 100")
    leader = await wait_for_pid(pid_file)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _reaped(leader)
    await wait_gone(leader)


async def test_cancelled_while_spawning(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = start(tmp_path, f"echo $$ > {pid_file}; sleep 100")
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if pid_file.exists() and pid_file.read_text().strip():
        await wait_gone(int(pid_file.read_text()))


async def test_background_leftovers_are_killed_when_the_task_ends(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    outcome = await start(tmp_path, f"sleep 100 & echo $! > {pid_file}; head -c 3000000 /dev/zero | wc -c")
    assert outcome.status is ResultStatus.SUCCEEDED
    assert outcome.cpu_time > 0 and outcome.max_rss > 0
    assert (tmp_path / "work" / ".dagon" / "stdout").read_text().strip() == "3000000"
    await wait_gone(await wait_for_pid(pid_file))


async def test_missing_workdir_parent_is_created_and_stderr_tail_is_capped(tmp_path: Path) -> None:
    outcome = await start(tmp_path, "head -c 10000 /dev/zero | tr '\\0' e >&2; exit 1")
    assert outcome.status is ResultStatus.FAILED
    assert outcome.stderr_tail == "e" * 4096
