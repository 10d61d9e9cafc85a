"""Tier 1: which finished runs leave the coordinator's memory, and when (no event loop)."""

from __future__ import annotations

import pytest

from dagon.core._retention import Retention, stored_result
from dagon.core._states import RunState, TaskState
from dagon.core._store import RunRecord, StoredRun
from dagon.protocol import RunId


def test_a_finished_run_leaves_after_keep_for_seconds() -> None:
    kept = Retention(keep_for=10.0, max_tasks=1000)
    kept.ended(RunId("a"), 100.0, 5)
    kept.ended(RunId("b"), 104.0, 5)
    assert kept.next_due() == 110.0
    assert kept.due(109.9) == []
    assert kept.due(110.0) == ["a"]
    assert kept.next_due() == 114.0
    assert kept.due(200.0) == ["b"]
    assert kept.next_due() is None and kept.kept == 0


def test_over_the_task_budget_the_oldest_leave_but_never_the_latest() -> None:
    kept = Retention(keep_for=600.0, max_tasks=25)
    for i, at in enumerate((1.0, 2.0, 3.0)):
        kept.ended(RunId(f"r{i}"), at, 10)
    assert kept.due(3.0) == ["r0"]  # 30 tasks > 25: the oldest goes
    kept.ended(RunId("big"), 4.0, 1000)
    assert kept.due(4.0) == ["r1", "r2"]  # the latest run stays even though it alone is over budget
    assert kept.kept == 1


def test_a_resumed_run_is_no_longer_finished() -> None:
    kept = Retention(keep_for=1.0, max_tasks=1000)
    kept.ended(RunId("a"), 0.0, 3)
    kept.reopened(RunId("a"))
    assert kept.due(100.0) == []
    kept.ended(RunId("a"), 50.0, 3)  # it ended again: counted once
    kept.ended(RunId("a"), 60.0, 3)
    assert kept.due(60.5) == [] and kept.due(61.0) == ["a"]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="keep_finished"):
        Retention(keep_for=-1.0)
    with pytest.raises(ValueError, match="keep_finished_tasks"):
        Retention(max_tasks=-1)


def test_the_result_of_a_stored_run() -> None:
    doc = {"task": "A", "state": "succeeded", "attempt": 1, "agent": "x", "exit_code": 0, "duration": 0.5}
    record = RunRecord("r", "wf", "failed", "1 of 2 tasks failed", 1.0, 2.0)
    stored = StoredRun(
        record, {}, {}, {"A": ("succeeded", 1, "x", "exit code 0", doc), "B": ("failed", 2, "y", "lost", None)}
    )
    result = stored_result(stored)
    assert result is not None and result.state is RunState.FAILED and result.workflow == "wf"
    assert result["A"].exit_code == 0 and result["A"].duration == 0.5
    assert result["B"].state is TaskState.FAILED and result["B"].cause == "lost" and result["B"].attempt == 2
    running = StoredRun(RunRecord("r", "wf", "interrupted", "", 1.0, None), {}, {}, {})
    assert stored_result(running) is None
