"""Garbage collection on the agent: real deletion, only inside the scratch root, only when signed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dagon.agent._scratch_gc import delete_runs, delete_tasks
from dagon.protocol import Codec, DeleteData, KeyRing, ProtocolError, RunId, Signer, TaskName, TaskRef

COORDINATOR = Signer.generate()
STRANGER = Signer.generate()


def ref(run: str, task: str, attempt: int = 1) -> TaskRef:
    return TaskRef(RunId(run), TaskName(task), attempt)


def make_task_dir(scratch: Path, run: str, task: str, attempt: int = 1) -> Path:
    path = scratch / run / f"{task}-{attempt}"
    (path / ".dagon").mkdir(parents=True)
    (path / "out.bin").write_bytes(b"x" * 100)
    (path / ".dagon" / "stdout").write_text("hi")
    return path


def test_task_directory_is_really_deleted_and_the_rest_stays(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    gone = make_task_dir(scratch, "r1", "A")
    kept = make_task_dir(scratch, "r1", "B")
    assert delete_tasks(scratch, [ref("r1", "A")]) == 1
    assert not gone.exists()
    assert (kept / "out.bin").read_bytes() == b"x" * 100
    assert not any(p.name.startswith("A") for p in (scratch / "r1").iterdir())  # not renamed aside
    assert delete_tasks(scratch, [ref("r1", "A")]) == 0  # already gone: nothing to do
    assert delete_tasks(scratch, [ref("r1", "B")]) == 1
    assert not (scratch / "r1").exists()  # the emptied run directory goes too


def test_links_inside_a_task_directory_are_removed_not_followed(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep me")
    task = make_task_dir(scratch, "r1", "A")
    os.symlink(outside, task / "link")
    assert delete_tasks(scratch, [ref("r1", "A")]) == 1
    assert (outside / "data").read_text() == "keep me"


@pytest.mark.parametrize("run", ["..", "../x", "a/b", ""])
def test_unsafe_names_are_refused(tmp_path: Path, run: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    victim = tmp_path / "x-1"
    victim.mkdir()
    assert delete_tasks(scratch, [ref(run, "x")]) == 0
    assert delete_runs(scratch, [RunId(run)]) == 0
    assert victim.exists() and tmp_path.exists()


def test_symlinked_run_or_task_directories_are_refused(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "A-1").mkdir(parents=True)
    os.symlink(elsewhere, scratch / "r1")  # a planted run directory pointing out of the root
    assert delete_tasks(scratch, [ref("r1", "A")]) == 0
    assert delete_runs(scratch, [RunId("r1")]) == 0
    assert (elsewhere / "A-1").is_dir()
    (scratch / "r2").mkdir()
    os.symlink(elsewhere / "A-1", scratch / "r2" / "B-1")
    assert delete_tasks(scratch, [ref("r2", "B")]) == 0
    assert (elsewhere / "A-1").is_dir()


def test_whole_runs_are_deleted(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    make_task_dir(scratch, "r1", "A")
    make_task_dir(scratch, "r2", "A")
    assert delete_runs(scratch, [RunId("r1"), RunId("r3")]) == 1
    assert sorted(p.name for p in scratch.iterdir()) == ["r2"]


def test_delete_requests_must_be_signed_by_the_coordinator() -> None:
    agent = Codec(sender="agent/a1", trust=KeyRing([COORDINATOR.public_key]))
    message = DeleteData(tasks=(ref("r1", "A"),))
    assert agent.decode(Codec(sender="coordinator/main", signer=COORDINATOR).encode(message)).message == message
    for forger in (None, STRANGER):
        with pytest.raises(ProtocolError):
            agent.decode(Codec(sender="coordinator/main", signer=forger).encode(message))
