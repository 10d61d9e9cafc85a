"""Local staging of workflow:// inputs, command rewriting, manifests."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from dagon.agent import StagingError, manifest, rewrite_command, stage_inputs
from dagon.agent._staging import mark_scratch_root, write_manifest
from dagon.protocol import AgentId, StageInput, TaskName


def producer(tmp_path: Path) -> Path:
    """A task directory as agents lay them out: ``<scratch root>/<run>/<task>-<attempt>``."""
    root = tmp_path / "scratch" / "run" / "A-1"
    (root / "out" / "sub").mkdir(parents=True)
    mark_scratch_root(tmp_path / "scratch")
    (root / "out" / "f1.txt").write_text("one\n")
    (root / "out" / "f2.txt").write_text("two\n")
    (root / "out" / "sub" / "deep.txt").write_text("deep\n")
    (root / ".dagon").mkdir()
    (root / ".dagon" / "stdout").write_text("internal")
    return root


def inp(root: Path, path: str, *, host: str = "h1") -> StageInput:
    return StageInput(
        f"workflow:///A/{path}", "wf", TaskName("A"), path, AgentId("a1"), host, str(root), source_run="run",
        source_attempt=1,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["hardlink", "symlink", "copy"])
def test_modes_stage_file_and_rewrite(tmp_path: Path, mode: str) -> None:
    root = producer(tmp_path)
    work = tmp_path / "B-1"
    staged = stage_inputs([inp(root, "out/f1.txt")], work, host_id="h1", mode=mode)
    target = Path(staged["workflow:///A/out/f1.txt"])
    assert target == work / ".dagon" / "inputs" / "wf" / "A" / "out" / "f1.txt"
    assert target.read_text() == "one\n"
    if mode == "symlink":
        assert target.is_symlink()
    else:
        assert not target.is_symlink()
        assert os.stat(target).st_ino != os.stat(root / "out" / "f1.txt").st_ino
    command = "cat workflow:///A/out/f1.txt>x; echo 'workflow:///A/out/f1.txt.bak'"
    rewritten = rewrite_command(command, staged)
    assert rewritten == f"cat {target}>x; echo 'workflow:///A/out/f1.txt.bak'"


def test_glob_and_directory_inputs(tmp_path: Path) -> None:
    root = producer(tmp_path)
    work = tmp_path / "B-1"
    staged = stage_inputs([inp(root, "out/*.txt"), inp(root, "out/sub")], work, host_id="h1", mode="hardlink")
    base = work / ".dagon" / "inputs" / "wf" / "A"
    assert staged["workflow:///A/out/*.txt"] == f"{base}/out/*.txt"
    assert sorted(p.name for p in (base / "out").glob("*.txt")) == ["f1.txt", "f2.txt"]
    assert (base / "out" / "sub" / "deep.txt").read_text() == "deep\n"


@pytest.mark.parametrize("path", ["../secret", "/etc/passwd", "out/../../x"])
def test_unsafe_paths_are_refused(tmp_path: Path, path: str) -> None:
    root = producer(tmp_path)
    with pytest.raises(StagingError, match="escapes the producer's directory"):
        stage_inputs([inp(root, path)], tmp_path / "B-1", host_id="h1", mode="copy")


def test_symlink_escaping_the_producer_is_refused(tmp_path: Path) -> None:
    root = producer(tmp_path)
    (tmp_path / "secret").write_text("s3cret")
    (root / "out" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(StagingError, match="points outside the producer's directory"):
        stage_inputs([inp(root, "out/link")], tmp_path / "B-1", host_id="h1", mode="copy")


def test_missing_input_and_other_host(tmp_path: Path) -> None:
    root = producer(tmp_path)
    with pytest.raises(StagingError, match=r"no such file in A's output"):
        stage_inputs([inp(root, "out/nope.txt")], tmp_path / "B-1", host_id="h1", mode="copy")
    with pytest.raises(StagingError, match="it must be pulled, not linked"):
        stage_inputs([inp(root, "out/f1.txt", host="h2")], tmp_path / "B-1", host_id="h1", mode="copy")


def test_manifest_hashes_outputs_and_skips_dagon_dir(tmp_path: Path) -> None:
    root = producer(tmp_path)
    (root / "out" / "dangling").symlink_to(tmp_path / "missing")
    files = {f.path: f for f in manifest(root)}
    assert set(files) == {"out/f1.txt", "out/f2.txt", "out/sub/deep.txt"}
    assert files["out/f1.txt"].size == 4
    assert files["out/f1.txt"].sha256 == hashlib.sha256(b"one\n").hexdigest()
    declared = manifest(root, ["out/f2.txt", "out/sub/*"])
    assert [f.path for f in declared] == ["out/f2.txt", "out/sub/deep.txt"]


def test_only_task_directories_of_a_scratch_root_are_staged_from(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "shadow").write_text("root:hash")
    # a producer reporting /etc-like directories as its working directory gets nothing staged
    for source in (tmp_path / "etc", tmp_path):
        with pytest.raises(StagingError, match="not a task directory of a dagon scratch root"):
            stage_inputs([inp(source, "shadow")], tmp_path / "B-1", host_id="h1", mode="copy")
    assert not (tmp_path / "B-1" / ".dagon" / "inputs").exists()


def test_a_claimed_directory_of_another_run_or_attempt_is_refused(tmp_path: Path) -> None:
    """Issue 15: an agent claiming this machine's host id reported another run's directory as its own
    producer's; only the directory of exactly the producer attempt named in the input is staged from."""
    other = producer(tmp_path)  # <scratch>/run/A-1, a real task directory of this machine
    for run, attempt in (("victim-run", 1), ("run", 2), ("", 0)):
        item = dataclasses.replace(inp(other, "out/f1.txt"), source_run=run, source_attempt=attempt)
        with pytest.raises(StagingError, match="is not the directory of 'A' attempt"):
            stage_inputs([item], tmp_path / "B-1", host_id="h1", mode="hardlink")
    assert not (tmp_path / "B-1" / ".dagon" / "inputs").exists()


def test_manifest_never_follows_links_out_of_the_task(tmp_path: Path) -> None:
    root = producer(tmp_path)
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "linked-dir").symlink_to("/etc")
    assert {f.path for f in manifest(root)} == {"out/f1.txt", "out/f2.txt", "out/sub/deep.txt"}
    assert manifest(root, ["../*", "/etc/passwd", "linked-dir/*", "passwd"]) == ()


def test_a_fifo_among_the_outputs_is_refused_not_waited_on(tmp_path: Path) -> None:
    root = producer(tmp_path)
    os.mkfifo(root / "out" / "pipe")
    with pytest.raises(StagingError, match="not a regular file"):
        stage_inputs([inp(root, "out/pipe")], tmp_path / "B-1", host_id="h1", mode="copy")


def test_the_manifest_is_never_written_through_a_link_the_task_planted(tmp_path: Path) -> None:
    root = producer(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    # .dagon itself replaced by a symlink to a directory the agent must not write into
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(root / ".dagon")
    (root / ".dagon").symlink_to(elsewhere)
    with pytest.raises(StagingError, match=r"replaced or removed its \.dagon directory"):
        write_manifest(root, [])
    assert list(elsewhere.iterdir()) == []
    # a real .dagon whose manifest.json is a symlink: replaced by a file, the link's target untouched
    (root / ".dagon").unlink()
    (root / ".dagon").mkdir()
    (root / ".dagon" / "manifest.json").symlink_to(victim)
    write_manifest(root, [])
    assert victim.read_text() == "untouched"
    assert not (root / ".dagon" / "manifest.json").is_symlink()
    assert (root / ".dagon" / "manifest.json").read_text() == "[]"
