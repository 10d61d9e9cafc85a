"""The ledger and the sweep of dagon.agent._keeper, on real processes: what a previous agent
life left is killed, and nothing else — never a process that merely got a recorded pid."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagon.agent._keeper import LIFE_ENV, Ledger, boot_id, read_ledger, start_time, take_over


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def sleeper(procs: list[subprocess.Popen[bytes]], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True, env={**os.environ, **(env or {})})
    procs.append(proc)
    return proc


def dead(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == -9


def test_a_recorded_group_is_killed_only_if_its_leader_has_the_recorded_start_time(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    ours, stranger = sleeper(sleepers), sleeper(sleepers)
    ledger = Ledger(tmp_path / "tasks-a.pids", "f00d")
    ledger.open()
    ledger.spawned(ours.pid, "run/task-1")
    started = start_time(stranger.pid)
    assert started is not None
    # A recycled pid: the ledger names a group whose leader started at another time.
    ledger.close(remove=False)
    with ledger.path.open("a") as f:
        f.write(f"+ {stranger.pid} {started - 1} run/other-1\n")
    killed, tasks = take_over(ledger.path)
    assert killed == 1 and tasks == ["run/other-1", "run/task-1"]
    assert dead(ours)
    assert stranger.poll() is None  # not ours: alive


def test_every_process_carrying_the_life_token_is_killed_even_outside_the_ledger(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    escaped = sleeper(sleepers, {LIFE_ENV: "cafe"})  # left the group (setsid), unrecorded
    other_life = sleeper(sleepers, {LIFE_ENV: "beef"})
    ledger = Ledger(tmp_path / "tasks-a.pids", "cafe")
    ledger.open()
    ledger.close(remove=False)
    assert take_over(ledger.path)[0] == 1
    assert dead(escaped)
    assert other_life.poll() is None


def test_a_ledger_from_another_boot_or_a_clean_stop_kills_nothing(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    proc = sleeper(sleepers, {LIFE_ENV: "abcd"})
    path = tmp_path / "tasks-a.pids"
    path.write_text(f"dagon-agent-life abcd not-{boot_id()}\n+ {proc.pid} {start_time(proc.pid)} r/t-1\n")
    assert take_over(path) == (0, [])
    assert proc.poll() is None
    assert take_over(tmp_path / "missing.pids") == (0, [])


def test_the_ledger_shrinks_back_to_its_header_when_no_group_is_live(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "tasks-a.pids", "f00d")
    ledger.open()
    ledger.spawned(os.getpid(), "r/a-1")
    ledger.spawned(os.getppid(), "r/b-1")
    ledger.reaped(os.getpid())
    assert read_ledger(ledger.path)[2] == {os.getppid(): start_time(os.getppid())}
    ledger.reaped(os.getppid())
    assert ledger.path.read_text().splitlines() == [f"dagon-agent-life f00d {boot_id()}"]
    ledger.close(remove=True)
    assert not ledger.path.exists()


def test_the_keeper_sweeps_when_its_pipe_closes(tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    from dagon.agent import _keeper

    task = sleeper(sleepers, {LIFE_ENV: "d00d"})
    ledger = Ledger(tmp_path / "tasks-a.pids", "d00d")
    ledger.open()
    keeper = subprocess.Popen(
        [sys.executable, "-I", "-S", _keeper.__file__, str(ledger.path), str(os.getpid())],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert keeper.stdin is not None and keeper.stderr is not None
    assert task.poll() is None
    keeper.stdin.close()  # what the kernel does when the agent dies
    assert keeper.wait(10) == 0
    assert dead(task)
    with keeper.stderr:
        assert b"killed 1 process(es)" in keeper.stderr.read()
