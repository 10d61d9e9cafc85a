"""DAGonStar's scratch layout on an agent: ``<scratch>/<epoch ms>-<task>``, recorded per attempt,
staged from, served and deleted only through that record (real files, no mocks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dagon.agent import StagingError, stage_inputs
from dagon.agent._layout import INDEX, indexed_name, make_task_dir, task_dir
from dagon.agent._scratch_gc import delete_runs, delete_tasks
from dagon.agent._staging import mark_scratch_root
from dagon.protocol import AgentId, RunId, StageInput, TaskName, TaskRef

NOW = 1_764_000_000.123


def root(tmp_path: Path) -> Path:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mark_scratch_root(scratch)
    return scratch


def inp(source: Path, *, run: str = "r1", attempt: int = 1, given: Path | None = None) -> StageInput:
    return StageInput(
        "workflow:///A/f.txt", "wf", TaskName("A"), "f.txt", AgentId("a1"), "h1", str(given or source),
        source_run=run, source_attempt=attempt,
    )  # fmt: skip


def test_directories_are_named_like_dagonstars_and_attempts_never_share_one(tmp_path: Path) -> None:
    scratch = root(tmp_path)
    first = make_task_dir(scratch, "r1", "A", 1, "dagonstar", NOW)
    assert first == scratch / "1764000000123-A" and first.is_dir()
    # A retry in the same millisecond gets the next free one; each attempt is recorded.
    retry = make_task_dir(scratch, "r1", "A", 2, "dagonstar", NOW)
    assert retry == scratch / "1764000000124-A"
    assert task_dir(scratch, "r1", "A", 1) == first and task_dir(scratch, "r1", "A", 2) == retry
    assert (scratch / INDEX / "r1" / "A-2").read_text() == "1764000000124-A\n"
    # The same attempt again (an agent restarted) keeps its directory.
    assert make_task_dir(scratch, "r1", "A", 1, "dagonstar", NOW + 5) == first
    # Without a record, the run layout's path (dagon's own).
    assert task_dir(scratch, "r1", "B", 1) == scratch / "r1" / "B-1"
    assert make_task_dir(scratch, "r1", "B", 1, "run", NOW) == scratch / "r1" / "B-1"


def test_staging_reads_only_the_directory_the_attempts_record_names(tmp_path: Path) -> None:
    scratch = root(tmp_path)
    source = make_task_dir(scratch, "r1", "A", 1, "dagonstar", NOW)
    (source / "f.txt").write_text("data\n")
    staged = stage_inputs([inp(source)], tmp_path / "B", host_id="h1", mode="copy")
    assert Path(staged["workflow:///A/f.txt"]).read_text() == "data\n"
    # Another attempt's or another run's claim on the same directory is refused.
    for claim in (inp(source, attempt=2), inp(source, run="r2")):
        with pytest.raises(StagingError, match="is not the directory of 'A'"):
            stage_inputs([claim], tmp_path / "C", host_id="h1", mode="copy")
    # A directory of the right shape that no record names is refused.
    forged = scratch / "1764000000999-A"
    forged.mkdir()
    (forged / "f.txt").write_text("forged\n")
    with pytest.raises(StagingError, match="is not the directory of 'A'"):
        stage_inputs([inp(forged)], tmp_path / "D", host_id="h1", mode="copy")
    # Reached through a link, the claimed path is not the recorded one.
    os.symlink(source, tmp_path / "alias")
    with pytest.raises(StagingError, match="is not the directory of 'A'"):
        stage_inputs([inp(source, given=tmp_path / "alias")], tmp_path / "E", host_id="h1", mode="copy")


def test_records_are_never_read_through_links_nor_name_anything_else(tmp_path: Path) -> None:
    scratch = root(tmp_path)
    make_task_dir(scratch, "r1", "A", 1, "dagonstar", NOW)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "A-1").write_text("1764000000123-A\n")
    os.symlink(elsewhere, scratch / INDEX / "r2")
    with pytest.raises(StagingError, match="symbolic link"):
        indexed_name(scratch, "r2", "A", 1)
    with pytest.raises(StagingError, match="symbolic link"):
        make_task_dir(scratch, "r2", "A", 1, "dagonstar", NOW)
    os.symlink(elsewhere / "A-1", scratch / INDEX / "r1" / "A-3")
    with pytest.raises(StagingError, match="cannot be read"):
        indexed_name(scratch, "r1", "A", 3)
    (scratch / INDEX / "r1" / "A-4").write_text("../../etc\n")
    with pytest.raises(StagingError, match="not a directory of 'A'"):
        task_dir(scratch, "r1", "A", 4)
    (scratch / INDEX / "r1" / "A-5").write_text("1764000000123-B\n")  # another task's directory
    with pytest.raises(StagingError, match="not a directory of 'A'"):
        task_dir(scratch, "r1", "A", 5)
    # Records are trusted only from their writer: the agent (or, checking another agent's root
    # on this host, the owner of that root's marker) — never an index someone else made in a
    # shared root such as /tmp.
    with pytest.raises(StagingError, match="belongs to another user"):
        indexed_name(scratch, "r1", "A", 1, uid=os.geteuid() + 1)


def test_garbage_collection_deletes_the_recorded_directory_and_its_record(tmp_path: Path) -> None:
    scratch = root(tmp_path)
    a = make_task_dir(scratch, "r1", "A", 1, "dagonstar", NOW)
    b = make_task_dir(scratch, "r1", "B", 1, "dagonstar", NOW)
    other = make_task_dir(scratch, "r2", "A", 1, "dagonstar", NOW)
    (a / "out").write_text("x")
    assert delete_tasks(scratch, [TaskRef(RunId("r1"), TaskName("A"), 1)]) == 1
    assert not a.exists() and b.is_dir() and other.is_dir()
    assert not (scratch / INDEX / "r1" / "A-1").exists()
    assert delete_runs(scratch, [RunId("r1")]) == 1
    assert not b.exists() and not (scratch / INDEX / "r1").exists()
    assert other.is_dir() and task_dir(scratch, "r2", "A", 1) == other
    assert (scratch / ".dagon-scratch").is_file()  # the root stays a scratch root
