"""The records of detached attempts (Slurm jobs) a restarted agent re-attaches to."""

from __future__ import annotations

import stat
from pathlib import Path

from dagon.agent._detached import DetachedRecords
from dagon.protocol import RunId, TaskAssignment, TaskName


def test_records_survive_a_new_process_and_go_once_dropped(tmp_path: Path) -> None:
    a = TaskAssignment(RunId("r1"), "wf", TaskName("simulate"), 3, "slurm", "sleep 1", env={"X": "secret://PW"},
                       runtime_options={"partition": "debug", "extra": ["--exclusive"]}, timeout=60.0)  # fmt: skip
    DetachedRecords(tmp_path / "detached-a", agent="a").save("coordinator/main", a)
    again = DetachedRecords(tmp_path / "detached-a", agent="a")  # what the next agent process reads
    assert again.load() == [("coordinator/main", a)]
    (path,) = (tmp_path / "detached-a").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again.drop(a.ref)
    again.drop(a.ref)  # dropping twice is fine (the attempt ended after a restart, say)
    assert again.load() == []


def test_an_unreadable_record_is_dropped_not_fatal(tmp_path: Path) -> None:
    records = DetachedRecords(tmp_path / "d", agent="a")
    assert records.load() == []  # no directory yet
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "0123.msgpack").write_bytes(b"\x93not msgpack")
    assert records.load() == []
    assert list((tmp_path / "d").iterdir()) == []
