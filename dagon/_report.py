"""``dagon report RUN``: a self-contained HTML report of one run from the run store.

The page has no external resources (no JavaScript, no stylesheet or font downloads): CSS is
inline and the Gantt chart is an inline SVG with one lane per agent and one bar per task
attempt, coloured by how the attempt ended. A table lists every task's duration, agent,
runtime and energy, with totals per runtime and per agent.

The run store is opened read-only (SQLite ``mode=ro``): a report never changes a store a
coordinator may be writing to.
"""

from __future__ import annotations

import html
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

from dagon.protocol import DagonError

__all__ = ["Attempt", "AttemptBars", "RunReport", "TaskRow", "axis_ticks", "load_report", "power_source", "render_html"]

# How an attempt ended → bar colour. "retried": the attempt failed and a new one followed.
STATE_COLOURS: Final = {
    "succeeded": "#2e9d4f",
    "failed": "#d1372f",
    "retried": "#e8912d",
    "cancelled": "#8a8a8a",
    "running": "#2f78c4",
    "lost": "#9b59b6",
}
_ENDS: Final = {
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "upstream_failed": "cancelled",
    "retry_wait": "retried",
}


class Attempt(NamedTuple):
    """One bar of the Gantt chart: a task attempt on an agent, from ``start`` to ``end``.

    A named tuple: the dashboard makes two per task attempt while a run goes, and a tuple is
    built several times faster than a frozen dataclass.
    """

    task: str
    attempt: int
    agent: str
    start: float
    end: float
    state: str  # a key of STATE_COLOURS


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task of the table (figures of its last attempt, from its stored result)."""

    name: str
    state: str
    attempt: int
    agent: str | None
    runtime: str
    duration: float | None
    exit_code: int | None
    energy_joules: float | None
    watts: float | None
    energy_measured: bool | None
    energy_source: str
    cause: str


@dataclass(frozen=True, slots=True)
class RunReport:
    run: str
    workflow: str
    state: str
    cause: str
    submitted_at: float
    finished_at: float | None
    tasks: tuple[TaskRow, ...]
    attempts: tuple[Attempt, ...]
    generated_at: float = field(default_factory=time.time)

    @property
    def agents(self) -> list[str]:
        """Gantt lanes: every agent that ran an attempt, in order of first start."""
        lanes: list[str] = []
        for a in sorted(self.attempts, key=lambda a: a.start):
            if a.agent not in lanes:
                lanes.append(a.agent)
        return lanes


def _connect_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise DagonError(f"no run store at {path} (set DAGON_HOME to the coordinator's home)")
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DagonError(f"cannot open the run store {path} read-only: {exc}") from exc


def load_report(store: Path, run: str, *, now: float | None = None) -> RunReport:
    """Read one run from the store at ``store`` (read-only).

    Raises:
        DagonError: no store there, or no such run in it.
    """
    db = _connect_ro(store)
    try:
        row = db.execute(
            "SELECT id, workflow, state, cause, submitted_at, finished_at, spec FROM runs WHERE id=?", (run,)
        ).fetchone()
        if row is None:
            recent = [r[0] for r in db.execute("SELECT id FROM runs ORDER BY submitted_at DESC LIMIT 3")]
            hint = f"; recent runs: {', '.join(recent)}" if recent else ""
            raise DagonError(f"no run {run!r} in {store} (`dagon runs` lists them){hint}")
        tasks = db.execute(
            "SELECT name, state, attempt, agent, cause, result FROM tasks WHERE run=? ORDER BY rowid", (run,)
        ).fetchall()
        transitions = db.execute(
            "SELECT task, old, new, attempt, agent, at FROM transitions WHERE run=? ORDER BY rowid", (run,)
        ).fetchall()
    except sqlite3.Error as exc:
        raise DagonError(f"cannot read run {run!r} from {store}: {exc}") from exc
    finally:
        db.close()
    run_id, workflow, state, cause, submitted_at, finished_at, spec_json = row
    try:
        spec = json.loads(spec_json)
    except (TypeError, ValueError):
        spec = {}
    runtimes = {
        str(t.get("name")): str(t.get("runtime", "process")) for t in spec.get("tasks", []) if isinstance(t, dict)
    }
    rows = tuple(_task_row(t, runtimes) for t in tasks)
    end = finished_at if finished_at is not None else (now if now is not None else time.time())
    return RunReport(
        run=run_id,
        workflow=workflow,
        state=state,
        cause=cause,
        submitted_at=submitted_at,
        finished_at=finished_at,
        tasks=rows,
        attempts=tuple(attempts_from(transitions, end=end, running=state == "running")),
    )


def _task_row(record: Sequence[Any], runtimes: dict[str, str]) -> TaskRow:
    name, state, attempt, agent, cause, result_json = record
    doc: dict[str, Any] = {}
    if result_json:
        try:
            doc = json.loads(result_json)
        except ValueError:
            doc = {}
    energy = doc.get("energy") if isinstance(doc.get("energy"), dict) else None
    return TaskRow(
        name=name,
        state=state,
        attempt=attempt,
        agent=agent,
        runtime=runtimes.get(name, "process"),
        duration=doc.get("duration"),
        exit_code=doc.get("exit_code"),
        energy_joules=float(energy["joules"]) if energy else None,
        watts=float(energy["watts"]) if energy else None,
        energy_measured=bool(energy["measured"]) if energy else None,
        energy_source=str(energy.get("source", "")) if energy else "",
        cause=cause,
    )


class AttemptBars:
    """Gantt bars built transition by transition (``dagon report`` at once, the dashboard live).

    An attempt starts when its task enters ``running`` and ends at the task's next transition
    out of ``running``. A short task's start and finish may reach the coordinator together, so
    its task goes from ``dispatched`` straight to an outcome: that bar starts at the dispatch.
    """

    __slots__ = ("_dispatched", "_open")

    def __init__(self) -> None:
        self._open: dict[str, Attempt] = {}
        self._dispatched: dict[str, tuple[int, str, float]] = {}  # task -> (attempt, agent, since)

    def feed(self, task: str, old: str, new: str, attempt: int, agent: str | None, at: float) -> Attempt | None:
        """Take one transition; returns the bar it opened (state ``running``) or closed, if any."""
        if new == "dispatched":
            self._dispatched[task] = (int(attempt), agent or "?", float(at))
        elif new == "running" and old != "running":
            self._dispatched.pop(task, None)
            bar = self._open[task] = Attempt(task, int(attempt), agent or "?", float(at), float(at), "running")
            return bar
        elif old == "running" and task in self._open:
            bar = self._open.pop(task)
            state = _ENDS.get(new, "retried" if new in ("ready", "pending", "dispatched") else "lost")
            return Attempt(bar.task, bar.attempt, bar.agent, bar.start, max(bar.start, float(at)), state)
        elif old == "dispatched" and task in self._dispatched:
            n, by, since = self._dispatched.pop(task)
            if new in ("succeeded", "failed", "retry_wait"):  # the agent reported an outcome
                return Attempt(task, n, by, since, max(since, float(at)), _ENDS[new])
        return None

    def still_open(self) -> list[Attempt]:
        """Bars started and not ended yet."""
        return list(self._open.values())


def attempts_from(transitions: Iterable[Sequence[Any]], *, end: float, running: bool = False) -> list[Attempt]:
    """Bars from stored transitions ``(task, old, new, attempt, agent, at)`` (see :class:`AttemptBars`).

    One still open when the history ends is ``running`` if the run is, otherwise ``lost`` (its
    end was never recorded), drawn up to ``end``.
    """
    tracker = AttemptBars()
    bars: list[Attempt] = []
    for task, old, new, attempt, agent, at in transitions:
        bar = tracker.feed(task, old, new, attempt, agent, at)
        if bar is not None and bar.state != "running":
            bars.append(bar)
    for bar in tracker.still_open():
        state = "running" if running else "lost"
        bars.append(Attempt(bar.task, bar.attempt, bar.agent, bar.start, max(bar.start, end), state))
    bars.sort(key=lambda b: (b.start, b.task))
    return bars


# -- rendering --------------------------------------------------------------------

_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem;margin:0 0 .3rem} h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
.meta{color:#555} .state-succeeded{color:#2e9d4f} .state-failed{color:#d1372f}
table{border-collapse:collapse;font-size:.9rem} th,td{padding:.25rem .6rem;border-bottom:1px solid #ddd}
th{text-align:left;background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
svg text{font-size:11px;font-family:inherit} .legend span{display:inline-block;margin-right:1rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
"""

BAR_ROW: Final = 22  # height of one row of bars
LANE_PAD: Final = 3
LABEL_WIDTH: Final = 150
CHART_WIDTH: Final = 900


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _when(ts: float | None) -> str:
    return "—" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _pack(attempts: Sequence[Attempt]) -> tuple[dict[Attempt, int], int]:
    """Row of each attempt inside its lane (concurrent attempts side by side), and the row count."""
    ends: list[float] = []
    rows: dict[Attempt, int] = {}
    for a in sorted(attempts, key=lambda a: (a.start, a.end)):
        row = next((i for i, end in enumerate(ends) if end <= a.start), len(ends))
        if row == len(ends):
            ends.append(a.end)
        ends[row] = a.end
        rows[a] = row
    return rows, max(1, len(ends))


def gantt_svg(report: RunReport) -> str:
    """The Gantt chart: lanes = agents, bars = attempts (x = seconds since submission).

    Attempts that overlap on one agent (several slots) get rows of their own in its lane.
    """
    lanes = report.agents
    origin = report.submitted_at
    last = max([a.end for a in report.attempts] + [report.finished_at or origin, origin])
    span = max(last - origin, 1e-3)
    scale = CHART_WIDTH / span
    width = LABEL_WIDTH + CHART_WIDTH + 20
    packed = [_pack([a for a in report.attempts if a.agent == agent]) for agent in lanes]
    tops = [0]
    for _, n in packed:
        tops.append(tops[-1] + n * BAR_ROW + 2 * LANE_PAD)
    chart_height = tops[-1] if lanes else BAR_ROW
    height = chart_height + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="gantt" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="tasks per agent over time">'
    ]
    for i, agent in enumerate(lanes):
        y, lane_height = tops[i], tops[i + 1] - tops[i]
        fill = "#fafafa" if i % 2 else "#f0f0f0"
        parts.append(
            f'<g class="lane" data-agent="{_e(agent)}" data-lane="{i}">'
            f'<rect x="0" y="{y}" width="{width}" height="{lane_height}" fill="{fill}"/>'
            f'<text x="4" y="{y + lane_height / 2 + 4:.1f}">{_e(agent)}</text></g>'
        )
    # A task's last attempt says the duration the table says (the agent's measure of the attempt,
    # same rounding); an earlier attempt has only the coordinator's view of it.
    table = {(t.name, t.attempt): t.duration for t in report.tasks if t.duration is not None}
    for lane, agent in enumerate(lanes):
        rows, _ = packed[lane]
        for a, row in rows.items():
            x = LABEL_WIDTH + (a.start - origin) * scale
            w = max(1.0, (a.end - a.start) * scale)
            y = tops[lane] + LANE_PAD + row * BAR_ROW + 2
            took = table.get((a.task, a.attempt), a.end - a.start)
            tip = f"{a.task} (attempt {a.attempt}) on {a.agent}: {a.state}, {took:.3f} s"
            parts.append(
                f'<rect class="bar" data-task="{_e(a.task)}" data-attempt="{a.attempt}" data-agent="{_e(agent)}"'
                f' data-lane="{lane}" data-state="{a.state}" x="{x:.2f}" y="{y}" width="{w:.2f}"'
                f' height="{BAR_ROW - 4}" rx="2" fill="{STATE_COLOURS[a.state]}"><title>{_e(tip)}</title></rect>'
            )
    axis_y = chart_height + 14
    for t, label in axis_ticks(span):
        x = LABEL_WIDTH + t * scale
        parts.append(f'<text class="tick" x="{x:.1f}" y="{axis_y}" text-anchor="middle">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def axis_ticks(span: float, *, most: int = 6) -> list[tuple[float, str]]:
    """Ticks from 0 to ``span`` seconds: a 1-2-5 step giving at most ``most`` of them, each label
    with as many decimals as the step needs — so no two labels read the same (``0.0 s, 0.0 s``)."""
    raw = span / max(1, most - 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    count = int(span / step + 1e-9)
    return [(k * step, f"{k * step:.{decimals}f} s") for k in range(count + 1)]


def power_source(source: str, measured: bool | None) -> str:
    """How a power or energy figure was obtained: ``rapl, measured``, ``modelled`` (the CPU model,
    whose name is ``model``), ``mqtt, modelled`` …; the bare ``source`` when nobody said."""
    if measured is None:
        return source
    how = "measured" if measured else "modelled"
    if not source or (source == "model" and not measured):
        return how
    return f"{source}, {how}"


def _totals(rows: Sequence[TaskRow], key: str) -> list[tuple[str, int, float, float | None, float | None]]:
    groups: dict[str, list[TaskRow]] = {}
    for r in rows:
        name = r.runtime if key == "runtime" else (r.agent or "—")
        groups.setdefault(name, []).append(r)
    out = []
    for name in sorted(groups):
        group = groups[name]
        seconds = sum(r.duration or 0.0 for r in group)
        joules = [r.energy_joules for r in group if r.energy_joules is not None]
        energy = sum(joules) if joules else None
        timed = sum(r.duration or 0.0 for r in group if r.energy_joules is not None)
        watts = energy / timed if energy is not None and timed > 0 else None
        out.append((name, len(group), seconds, energy, watts))
    return out


def render_html(report: RunReport) -> str:
    """The whole page (UTF-8 text, no external resources)."""
    rows = []
    for t in report.tasks:
        rows.append(
            f'<tr class="task" data-task="{_e(t.name)}" data-state="{_e(t.state)}">'
            f"<td>{_e(t.name)}</td><td class='state-{_e(t.state)}'>{_e(t.state)}</td>"
            f"<td class='num'>{t.attempt}</td><td>{_e(t.agent or '—')}</td><td>{_e(t.runtime)}</td>"
            f"<td class='num'>{_e(_num(t.duration, '.3f'))}</td>"
            f"<td class='num'>{_e('' if t.exit_code is None else t.exit_code)}</td>"
            f"<td class='num' data-joules='{'' if t.energy_joules is None else repr(t.energy_joules)}'>"
            f"{_e(_num(t.energy_joules, '.3f'))}</td>"
            f"<td class='num' data-watts='{'' if t.watts is None else repr(t.watts)}'>{_e(_num(t.watts, '.2f'))}</td>"
            f"<td>{_e(power_source(t.energy_source, t.energy_measured))}</td><td>{_e(t.cause[:200])}</td></tr>"
        )
    totals = []
    for key in ("runtime", "agent"):
        body = "".join(
            f'<tr class="total" data-{key}="{_e(name)}"><td>{_e(name)}</td><td class="num">{n}</td>'
            f"<td class='num'>{seconds:.3f}</td><td class='num'>{_e(_num(energy, '.3f'))}</td>"
            f"<td class='num'>{_e(_num(watts, '.2f'))}</td></tr>"
            for name, n, seconds, energy, watts in _totals(report.tasks, key)
        )
        totals.append(
            f'<h2>Totals per {key}</h2><table id="totals-{key}"><thead><tr><th>{key}</th><th>tasks</th>'
            f"<th>task seconds</th><th>energy J</th><th>avg W</th></tr></thead><tbody>{body}</tbody></table>"
        )
    all_joules = [t.energy_joules for t in report.tasks if t.energy_joules is not None]
    took = "" if report.finished_at is None else f", took {report.finished_at - report.submitted_at:.1f} s"
    legend = "".join(f'<span><i style="background:{c}"></i>{s}</span>' for s, c in STATE_COLOURS.items())
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>dagon run {_e(report.run)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Run {_e(report.run)} — {_e(report.workflow)}</h1>"
        f"<p class='meta'>state <b class='state-{_e(report.state)}' id='run-state'>{_e(report.state)}</b>"
        f"{' — ' + _e(report.cause) if report.cause else ''}<br>submitted {_e(_when(report.submitted_at))},"
        f" finished {_e(_when(report.finished_at))}{_e(took)}; {len(report.tasks)} tasks,"
        f" {len(report.attempts)} attempts on {len(report.agents)} agent(s)"
        f"{f', {sum(all_joules):.3f} J in total' if all_joules else ''}</p>"
        f"<h2>Tasks per agent</h2><div class='legend'>{legend}</div>{gantt_svg(report)}"
        "<h2>Tasks</h2><table id='tasks'><thead><tr><th>task</th><th>state</th><th>attempt</th><th>agent</th>"
        "<th>runtime</th><th>duration s</th><th>exit</th><th>energy J</th><th>avg W</th><th>energy source</th>"
        f"<th>cause</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{''.join(totals)}"
        f"<p class='meta'>generated by dagon {_e(_when(report.generated_at))}; energy is the agents' attribution"
        " of node power to each task's last attempt (modelled figures come from a CPU-utilisation model).</p>"
        "</body></html>\n"
    )
