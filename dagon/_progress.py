"""Live progress and the final summary table for terminal users."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dagon._client import RunHandle
from dagon.core import RunResult, TaskState
from dagon.core._states import TERMINAL

__all__ = ["follow", "summary_table"]

_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
EVENTS_CATCH_UP = 2.0  # seconds the progress view waits for the last events once the run ended


async def follow(handle: RunHandle, *, total: int, console: Console) -> RunResult:
    """Show a progress bar (done/running/failed) until the run ends; return its result (which
    carries the attempts that were retried and why, ``TaskOutcome.retries``, however it is awaited)."""
    counts: Counter[str] = Counter()
    states: dict[str, str] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    ) as progress:
        bar = progress.add_task(handle.workflow or handle.id, total=total, detail="starting")

        async def watch() -> None:
            async for event in handle.events():
                if event.task is None:
                    continue
                old = states.get(event.task)
                if old is not None:
                    counts[old] -= 1
                states[event.task] = event.state
                counts[event.state] += 1
                done = sum(n for s, n in counts.items() if s in _TERMINAL_VALUES)
                detail = (
                    f"[green]{counts['succeeded']} ok[/] [cyan]{counts['running'] + counts['dispatched']} running[/]"
                    f" [red]{counts['failed'] + counts['upstream_failed']} failed[/]"
                )
                progress.update(bar, completed=done, detail=detail)

        watcher = asyncio.create_task(watch())
        try:
            result = await handle.wait()
            # The event stream ends with the run: let it catch up (bounded) before reading it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watcher), EVENTS_CATCH_UP)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        done = sum(1 for t in result.tasks.values() if t.state in TERMINAL)
        progress.update(bar, completed=done, detail=result.state.value)
    return result


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def summary_table(result: RunResult, *, max_rows: int = 50) -> Table:
    """A table of tasks (failed ones first) with state, exit code, duration, agent."""
    table = Table(title=f"run {result.run} — {result.state.value}", title_justify="left")
    for col in ("task", "state", "exit", "duration", "agent", "details"):
        table.add_column(col, overflow="fold")
    colours = {TaskState.SUCCEEDED: "green", TaskState.FAILED: "red", TaskState.UPSTREAM_FAILED: "yellow"}
    ordered = sorted(result.tasks.values(), key=lambda t: t.state is TaskState.SUCCEEDED)
    for outcome in ordered[:max_rows]:
        colour = colours.get(outcome.state, "white")
        details = "" if outcome.ok else outcome.reason()
        if outcome.retries:  # what ran before the attempt shown, and why it did not count
            again = "; ".join(str(r) for r in outcome.retries)
            details = f"{details} — retried: {again}" if details else f"retried: {again}"
        table.add_row(
            outcome.name,
            f"[{colour}]{outcome.state.value}[/]",
            "-" if outcome.exit_code is None else str(outcome.exit_code),
            _fmt_duration(outcome.duration),
            outcome.agent or "-",
            details,
        )
    if len(ordered) > max_rows:
        hidden = Counter(t.state.value for t in ordered[max_rows:])
        summary = ", ".join(f"{n} {s}" for s, n in hidden.items())
        table.add_row(f"… {len(ordered) - max_rows} more", summary, "", "", "", "")
    if result.scratch_peak:
        peaks = ", ".join(f"{agent} {_fmt_bytes(n)}" for agent, n in sorted(result.scratch_peak.items()))
        table.caption = f"peak scratch (task outputs) per agent: {peaks}"
    return table


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
