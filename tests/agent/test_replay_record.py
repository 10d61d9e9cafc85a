"""The agent's on-disk record: accepted command ids and revoked data grants survive a restart."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from dagon.agent._replay import ReplayRecord
from dagon.protocol import Grant, ProtocolError, RunId, TaskName, TaskRef


def grant(consumer: tuple[str, str, int] | None) -> Grant:
    return Grant("r1", "A", 1, "f.txt", "b", "read", time.time() + 60, consumer=consumer)


def test_revoked_grants_are_refused_also_after_a_restart_until_they_expire(tmp_path: Path) -> None:
    path = tmp_path / "home" / "replay-a.sqlite"
    record = ReplayRecord(path, window=120)
    record.open()
    ended, running = TaskRef(RunId("r1"), TaskName("B"), 1), TaskRef(RunId("r1"), TaskName("C"), 1)
    record.revoke((ended, TaskRef(RunId("r1"), TaskName("D"), 2)), time.time() + 60)
    record.revoke((TaskRef(RunId("r1"), TaskName("D"), 2),), time.time() - 1)  # never shortens a revocation
    with pytest.raises(ProtocolError, match="r1/B attempt 1, which it was issued for, has ended") as info:
        record.admit_grant(grant(("r1", "B", 1)))
    assert info.value.reason == "revoked"
    assert record.admit_grant(grant((running.run, running.task, running.attempt))).consumer == ("r1", "C", 1)
    assert record.admit_grant(grant(None)).consumer is None
    record.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ReplayRecord(path, window=120)
    again.open()
    for consumer in (("r1", "B", 1), ("r1", "D", 2)):
        with pytest.raises(ProtocolError, match="revoked"):
            again.admit_grant(grant(consumer))
    again.revoke((running,), time.time() - 1)  # already expired: nothing to remember
    again.prune()
    assert again.admit_grant(grant(("r1", "C", 1))).consumer == ("r1", "C", 1)
    again.close()
