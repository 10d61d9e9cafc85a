"""Retried attempts and their cause in the summary table of `dagon run` / `wf.run()` (issue 13,
point 7), on the embedded default: a task that fails once and succeeds on its retry."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import dagon
from dagon._progress import follow, summary_table
from dagon.core import Retry, RunStore
from dagon.core._attempts import past_attempts


async def test_a_retried_attempt_and_its_cause_are_in_the_result_and_the_summary_table(tmp_path: Path) -> None:
    wf = dagon.Workflow("flaky")
    wf.shell("flaky", '[ "$DAGON_ATTEMPT" = 1 ] && { echo first try fails >&2; exit 3; }; echo ok > out.txt',
             retry=Retry(attempts=1, backoff=0.1, max_backoff=0.1))  # fmt: skip
    wf.shell("steady", "echo fine")
    screen = io.StringIO()
    async with dagon.connect(home=tmp_path, agent_slots=2) as client:
        run = await client.submit(wf)
        result = await follow(run, total=2, console=Console(file=screen))
    assert result.ok, result.cause
    (past,) = result["flaky"].retries
    assert past.attempt == 1 and past.agent == result["flaky"].agent
    assert "exit" in past.cause and "3" in past.cause and "retry in" in past.cause, past.cause
    assert result["flaky"].attempt == 2
    assert result["steady"].retries == ()
    Console(file=screen, width=300).print(summary_table(result))
    row = next(line for line in screen.getvalue().splitlines() if line.startswith("│ flaky "))
    assert f"retried: attempt 1 on {past.agent}: {past.cause}" in row, screen.getvalue()


async def test_retried_attempts_are_in_the_waited_result_and_read_back_from_the_run_store(tmp_path: Path) -> None:
    wf = dagon.Workflow("flaky-stored")
    wf.shell("flaky", '[ "$DAGON_ATTEMPT" = 1 ] && exit 4; true', retry=Retry(attempts=1, backoff=0.1, max_backoff=0.1))
    async with dagon.connect(home=tmp_path, agent_slots=1) as client:
        result = await (await client.submit(wf)).wait()
    assert result.ok
    (waited,) = result["flaky"].retries  # the run handle's result alone carries them (no events followed)
    assert waited.attempt == 1 and "exit code 4" in waited.cause
    store = RunStore(tmp_path / "runs.sqlite")
    try:
        found = past_attempts(store.transitions(result.run))
    finally:
        store.close()
    (past,) = found["flaky"]
    assert past.attempt == 1 and past.agent == result["flaky"].agent and "exit code 4" in past.cause
