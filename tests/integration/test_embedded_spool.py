"""The embedded default leaves nothing in its agent's spool (issue 13, point 4).

The embedded agent works for the coordinator of its own process alone: a finished run
waits for its last acknowledgements, and results for a coordinator that ended with an
earlier process are dropped by rule — with a warning only when finished work is lost.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

import dagon
from dagon.agent import stable_agent_id
from dagon.agent._spool import ResultSpool
from dagon.protocol import AgentId, ResultStatus, RunId, TaskName, TaskResult


def rows(home: Path) -> dict[str, int]:
    """Result rows of every spool file in ``home``, read from disk."""
    found = {}
    for path in sorted(home.glob("spool-*.sqlite")):
        with sqlite3.connect(path) as db:
            found[path.name] = int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    return found


def chain() -> dagon.Workflow:
    wf = dagon.Workflow("tiny")
    wf.shell("a", "echo a > a.txt")
    wf.shell("b", "cat workflow:///a/a.txt > b.txt")
    return wf


async def test_ten_embedded_runs_leave_an_empty_spool_and_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(10):
        async with dagon.connect(home=tmp_path, agent_slots=2) as client:
            result = await (await client.submit(chain())).wait()
        assert result.ok, result.cause
    agent = stable_agent_id(tmp_path)
    assert rows(tmp_path) == {f"spool-{agent}.sqlite": 0}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_results_for_a_coordinator_gone_with_its_process_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = stable_agent_id(tmp_path)
    # What a killed `dagon run` leaves: one finished and one cancelled result, never acknowledged.
    spool = ResultSpool(tmp_path / f"spool-{agent}.sqlite", agent=AgentId(agent))
    await spool.open()
    now = time.time()
    old = RunId("old-run")
    done = TaskResult(old, TaskName("x"), 1, ResultStatus.SUCCEEDED, 0, now, now)
    cancelled = TaskResult(old, TaskName("y"), 1, ResultStatus.CANCELLED, None, now, now)
    await spool.put([("client-gone-1", done), ("client-gone-1", cancelled)])
    await spool.close()
    assert rows(tmp_path) == {f"spool-{agent}.sqlite": 2}
    caplog.set_level(logging.WARNING)
    async with dagon.connect(home=tmp_path, agent_slots=2) as client:
        result = await (await client.submit(chain())).wait()
    assert result.ok, result.cause
    assert rows(tmp_path) == {f"spool-{agent}.sqlite": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # One warning, for the finished work only (the cancelled attempt carried nothing).
    assert len(warnings) == 1, warnings
    assert "1 finished result(s) were never acknowledged as stored" in warnings[0] and "old-run/x" in warnings[0]


async def test_two_embedded_runs_at_once_on_one_home_take_two_agent_ids(tmp_path: Path) -> None:
    async def one() -> dagon.RunResult:
        async with dagon.connect(home=tmp_path, agent_slots=1) as client:
            return await (await client.submit(chain())).wait()

    assert (await one()).ok  # creates the home's keys first (their creation is not safe within one process)
    first, second = await asyncio.gather(one(), one())
    assert first.ok and second.ok
    base = stable_agent_id(tmp_path)
    assert {first["a"].agent, second["a"].agent} == {base, f"{base}-2"}
    assert set(rows(tmp_path).values()) == {0}
