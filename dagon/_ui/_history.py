"""Runs the coordinator no longer holds in memory, read from its run store (read-only).

Every function here is blocking (SQLite) and runs in a worker thread. The store is opened
with its own read-only connection (``mode=ro``, as ``dagon report`` does), so the dashboard
never takes the coordinator's store lock nor writes anything.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dagon._report import AttemptBars, _connect_ro
from dagon._ui._docs import bar_row, layers, spec_doc
from dagon.core import Task, Workflow
from dagon.protocol import DagonError

__all__ = ["StoredRunDoc", "stored_run", "stored_runs", "stored_task_detail"]

MAX_RUNS: Final = 500


def _open(path: str) -> sqlite3.Connection | None:
    if not path or path == ":memory:":
        return None
    try:
        return _connect_ro(Path(path))
    except DagonError:
        return None


def stored_runs(path: str, limit: int = 200) -> list[dict[str, Any]]:
    """Summaries of the newest ``limit`` runs of the store (counts per state, energy)."""
    db = _open(path)
    if db is None:
        return []
    try:
        rows = db.execute(
            # The task count without parsing every spec in Python (a 10,000-task spec is megabytes).
            "SELECT id, workflow, state, cause, submitted_at, finished_at,"
            " CASE WHEN json_valid(spec) THEN json_array_length(spec, '$.tasks') ELSE 0 END FROM runs"
            " ORDER BY submitted_at DESC LIMIT ?",
            (min(limit, MAX_RUNS),),
        ).fetchall()
        ids = [r[0] for r in rows]
        counts: dict[str, dict[str, int]] = {i: {} for i in ids}
        energy: dict[str, float] = {}
        if ids:
            marks = ",".join("?" * len(ids))
            # A task's latest state is its last transition (the tasks table only holds final results).
            for run, state, n in db.execute(
                f"SELECT run, new, count(*) FROM transitions WHERE rowid IN (SELECT max(rowid) FROM transitions"
                f" WHERE run IN ({marks}) GROUP BY run, task) GROUP BY run, new",
                ids,
            ):
                counts[run][state] = n
            for run, joules in db.execute(
                f"SELECT run, sum(json_extract(result, '$.energy.joules')) FROM tasks WHERE run IN ({marks})"
                " GROUP BY run",
                ids,
            ):
                if joules is not None:
                    energy[run] = float(joules)
    except sqlite3.Error:
        return []
    finally:
        db.close()
    out = []
    for run, workflow, state, cause, submitted_at, finished_at, total_or_none in rows:
        total = int(total_or_none or 0)
        seen = sum(counts[run].values())
        if total > seen:
            counts[run]["pending"] = counts[run].get("pending", 0) + total - seen
        out.append(
            {
                "id": run,
                "workflow": workflow,
                "state": state,
                "cause": cause,
                "tasks": max(total, seen),
                "counts": counts[run],
                "submitted_at": submitted_at,
                "finished_at": finished_at,
                "energy": energy.get(run),
                "live": False,
            }
        )
    return out


@dataclass(frozen=True, slots=True)
class StoredRunDoc:
    """A stored run as the run page's snapshot, plus each task's stored details."""

    snapshot: dict[str, Any]
    specs: dict[str, dict[str, Any]]  # task -> its spec as stored
    results: dict[str, dict[str, Any]]  # task -> its stored result document
    transitions: list[tuple[Any, ...]]  # (task, old, new, attempt, agent, cause, at)


def stored_run(path: str, run: str) -> StoredRunDoc | None:
    """One run of the store as a page snapshot (``None``: no store, or no such run)."""
    db = _open(path)
    if db is None:
        return None
    try:
        row = db.execute(
            "SELECT id, workflow, state, cause, submitted_at, finished_at, spec FROM runs WHERE id=?", (run,)
        ).fetchone()
        if row is None:
            return None
        transitions = db.execute(
            "SELECT task, old, new, attempt, agent, cause, at FROM transitions WHERE run=? ORDER BY rowid", (run,)
        ).fetchall()
        stored = db.execute("SELECT name, result FROM tasks WHERE run=?", (run,)).fetchall()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    run_id, workflow, state, cause, submitted_at, finished_at, spec_json = row
    try:
        spec = json.loads(spec_json)
    except ValueError:
        spec = {}
    specs = {str(t["name"]): t for t in spec.get("tasks", []) if isinstance(t, dict) and "name" in t}
    deps: dict[str, frozenset[str]] = {}
    try:
        deps = Workflow.from_dict(spec).graph(external=True).deps
    except Exception:  # a spec this version cannot rebuild still shows its tasks, without edges
        deps = {}
    last: dict[str, tuple[str, int, str | None]] = {}
    for task, _old, new, attempt, agent, _cause, _at in transitions:
        last[task] = (new, attempt, agent)
    names = list(specs) + [t for t in last if t not in specs]
    index = {n: i for i, n in enumerate(names)}
    depth = layers(names, deps)
    tracker = AttemptBars()
    bars: dict[tuple[str, int], list[Any]] = {}
    for task, old, new, attempt, agent, _cause, at in transitions:
        bar = tracker.feed(task, old, new, attempt, agent, at)
        if bar is not None:
            bars[(bar.task, bar.attempt)] = bar_row(bar)
    for key, row in bars.items():
        if row[5] == "running":  # never closed: the run ended without its end recorded
            bars[key] = [*row[:4], finished_at or row[3], "running" if state == "running" else "lost"]
    results = {}
    for name, result in stored:
        try:
            results[name] = json.loads(result) if result else {}
        except ValueError:
            results[name] = {}
    counts: dict[str, int] = {}
    for n in names:
        s = last.get(n, ("pending",))[0]
        counts[s] = counts.get(s, 0) + 1
    energy = [float(r["energy"]["joules"]) for r in results.values() if isinstance(r.get("energy"), dict)]
    snapshot = {
        "run": {
            "id": run_id,
            "workflow": workflow,
            "state": state,
            "cause": cause,
            "tasks": len(names),
            "counts": counts,
            "submitted_at": submitted_at,
            "finished_at": finished_at,
            "energy": sum(energy) if energy else None,
            "live": False,
        },
        "tasks": {
            "names": names,
            "states": [last.get(n, ("pending", 0, None))[0] for n in names],
            "attempts": [last.get(n, ("pending", 0, None))[1] for n in names],
            "agents": [last.get(n, ("pending", 0, None))[2] for n in names],
            "layer": [depth.get(n, 0) for n in names],
            "deps": [sorted(index[d] for d in deps.get(n, ()) if d in index) for n in names],
        },
        "bars": list(bars.values()),
        "now": time.time(),
    }
    return StoredRunDoc(snapshot, specs, results, list(transitions))


_RESULT_KEYS: Final = (
    "exit_code", "duration", "cpu_time", "max_rss", "stderr_tail", "error", "workdir", "energy", "host", "cause",
)  # fmt: skip


def stored_task_detail(stored: StoredRunDoc, run: str, task: str) -> dict[str, Any]:
    """A stored task's details in the shape of :func:`dagon._ui._docs.task_detail`."""
    snap = stored.snapshot
    names: list[str] = snap["tasks"]["names"]
    i = names.index(task) if task in names else -1
    doc: dict[str, Any] = {
        "run": run,
        "name": task,
        "state": snap["tasks"]["states"][i] if i >= 0 else "pending",
        "attempt": snap["tasks"]["attempts"][i] if i >= 0 else 0,
        "agent": snap["tasks"]["agents"][i] if i >= 0 else None,
        "deps": [names[d] for d in snap["tasks"]["deps"][i]] if i >= 0 else [],
        "inputs": [],
        "staging": "",
    }
    spec = stored.specs.get(task)
    if spec is not None:
        try:
            doc.update(spec_doc(Task.from_dict(spec)))
        except Exception:  # an old spec this version cannot read: show what is certain
            doc["command"] = str(spec.get("command", ""))
    result = stored.results.get(task) or {}
    doc.update({k: result.get(k) for k in _RESULT_KEYS if k in result})
    doc["outputs"] = [
        {"path": o.get("path"), "size": o.get("size")}
        for o in (result.get("outputs") or [])[:200]
        if isinstance(o, dict)
    ]
    doc["history"] = [
        {"old": old, "state": new, "attempt": attempt, "agent": agent, "cause": cause, "at": at}
        for t, old, new, attempt, agent, cause, at in stored.transitions
        if t == task
    ]
    doc["attempts"] = [bar for bar in snap["bars"] if bar[0] == task]
    return doc
