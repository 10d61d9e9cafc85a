"""The dashboard's JSON documents, built from the coordinator's views (pure functions).

What a page gets never includes a secret value: task environments and runtime options
are shown by key only (a value may be a credential); commands hold ``secret://NAME``
placeholders, never values (agents substitute them, see ``dagon.agent._secrets``); the
stderr tail and error come from agents, which mask every substituted secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from dagon._report import Attempt
from dagon.core import Task
from dagon.protocol import Capabilities, TaskResult, Telemetry

if TYPE_CHECKING:
    from dagon.core import AgentView, RunView, TaskView

__all__ = [
    "Change",
    "agent_doc",
    "bar_row",
    "layers",
    "run_summary",
    "sample_row",
    "spec_doc",
    "task_detail",
    "task_result_fields",
    "task_rows",
]


class Change(NamedTuple):
    """One task transition as the dashboard keeps it (a tuple: cheap to make, nothing else referenced)."""

    task: str
    old: str
    new: str
    attempt: int
    agent: str | None
    cause: str
    at: float


# Runtime options whose values are shown (what a task runs in, never how it authenticates).
_SHOWN_OPTIONS: Final = frozenset({"image", "partition", "namespace", "pull"})


def run_summary(view: RunView, *, energy: float | None, live: bool = True) -> dict[str, Any]:
    """One row of the runs page (``energy``: joules of the tasks' last attempts, None when unknown)."""
    return {
        "id": view.id,
        "workflow": view.workflow.name,
        "state": view.state.value,
        "cause": view.cause,
        "tasks": len(view.tasks),
        "counts": {state.value: n for state, n in view.counts.items() if n},
        "submitted_at": view.submitted_at,
        "finished_at": view.finished_at,
        "energy": energy,
        "live": live,
    }


def layers(order: Sequence[str], deps: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Depth of each task: 0 for tasks without dependencies, else one more than its deepest one.

    ``order`` lists every task; a dependency outside it (another run's task) is ignored, and
    so is any cycle (the graph was validated; this must still terminate on bad input).
    """
    known = set(order)
    depth: dict[str, int] = {}
    # Fast path: ``order`` is usually topological already (a run's tasks are made in graph order),
    # so one pass does it; the first dependency not seen yet falls back to the search below.
    for name in order:
        best = -1
        for d in deps.get(name, ()):
            if d in known:
                seen = depth.get(d)
                if seen is None:
                    break
                if seen > best:
                    best = seen
        else:
            depth[name] = best + 1
            continue
        break
    else:
        return depth
    for name in order:
        if name in depth:
            continue
        stack: list[tuple[str, bool]] = [(name, False)]
        visiting: set[str] = set()
        while stack:
            node, expanded = stack.pop()
            if node in depth:
                continue
            parents = [d for d in deps.get(node, ()) if d in known]
            if expanded:
                visiting.discard(node)
                depth[node] = 1 + max((depth.get(p, 0) for p in parents), default=-1)
                continue
            visiting.add(node)
            stack.append((node, True))
            stack.extend((p, False) for p in parents if p not in depth and p not in visiting)
    return depth


def task_rows(view: RunView) -> dict[str, Any]:
    """Every task of a run, column-wise (a 10,000-task run is ~0.5 MB of JSON, not 2 MB of objects).

    ``deps`` holds indexes into ``names``; ``layer`` is each task's depth in the DAG. Tasks are
    ordered by depth, then as the workflow declares them (tasks expanded at run time last).
    """
    deps = view.graph.deps
    depth = layers(list(view.tasks), deps)
    declared = {name: i for i, name in enumerate(view.workflow.tasks)}
    late = len(declared)
    names = sorted(view.tasks, key=lambda n: (depth.get(n, 0), declared.get(n, late)))
    index = {name: i for i, name in enumerate(names)}
    tasks = [view.tasks[n] for n in names]
    return {
        "names": names,
        "states": [t.state.value for t in tasks],
        "attempts": [t.attempt for t in tasks],
        "agents": [t.agent for t in tasks],
        "layer": [depth.get(n, 0) for n in names],
        "deps": [sorted(index[d] for d in deps.get(n, ()) if d in index) for n in names],
    }


def bar_row(bar: Attempt) -> list[Any]:
    """One Gantt bar: ``[task, attempt, agent, start, end, state]``."""
    return [bar.task, bar.attempt, bar.agent, bar.start, bar.end, bar.state]


def spec_doc(spec: Task) -> dict[str, Any]:
    """What a task asked for (environment and runtime options by key only)."""
    return {
        "command": spec.command,
        "runtime": spec.runtime,
        "timeout": spec.timeout,
        "retries": spec.retry.attempts,
        "cpus": spec.cpus,
        "memory": spec.memory,
        "labels": dict(spec.labels),
        "pinned": spec.agent,
        "env_keys": sorted(spec.env),
        "options": {
            k: (v if k in _SHOWN_OPTIONS and isinstance(v, str) else "…") for k, v in spec.runtime_options.items()
        },
        "keep": spec.keep,
        "checkpoint": spec.checkpoint,
    }


def task_result_fields(result: TaskResult | None) -> dict[str, Any]:
    """The agent's report of the task's last attempt (empty values when there is none)."""
    if result is None:
        return {"exit_code": None, "stderr_tail": "", "error": "", "staging": "", "outputs": [], "energy": None}
    energy = None
    if result.energy_joules:
        energy = {
            "joules": result.energy_joules,
            "watts": result.power_watts,
            "measured": result.energy_measured,
            "source": result.energy_source,
        }
    return {
        "exit_code": result.exit_code,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "duration": result.duration,
        "cpu_time": result.cpu_time,
        "max_rss": result.max_rss,
        "stderr_tail": result.stderr_tail,
        "error": result.error,
        "staging": result.staging,
        "outputs": [{"path": o.path, "size": o.size} for o in result.outputs[:200]],
        "outputs_total": len(result.outputs),
        "energy": energy,
    }


def task_detail(view: TaskView, history: Sequence[Change], bars: Iterable[Attempt]) -> dict[str, Any]:
    """The details panel and log page of one task (``history``: its transitions, oldest first)."""
    run = view.run
    doc: dict[str, Any] = {
        "run": run.id,
        "name": view.name,
        "state": view.state.value,
        "attempt": view.attempt,
        "agent": view.agent,
        "host": view.host,
        "cause": view.cause,
        "workdir": view.workdir,
        "deps": sorted(run.graph.deps.get(view.name, ())),
        "inputs": [r.text for r in run.graph.refs_of(view.name)],
        **spec_doc(view.spec),
        **task_result_fields(view.result),
    }
    if view.exit_code is not None:
        doc["exit_code"] = view.exit_code
    doc["history"] = [
        {"old": t.old, "state": t.new, "attempt": t.attempt, "agent": t.agent, "cause": t.cause, "at": t.at}
        for t in history
    ]
    doc["attempts"] = [bar_row(b) for b in bars if b.task == view.name]
    return doc


def agent_doc(agent: AgentView, *, now: float) -> dict[str, Any]:
    """An agent's row of the agents page (what it offers and how busy it is)."""
    caps: Capabilities = agent.capabilities
    return {
        "id": agent.id,
        "online": agent.online,
        "hostname": caps.hostname,
        "arch": caps.arch,
        "os": caps.os,
        "cpus": caps.cpus,
        "memory": caps.memory,
        "runtimes": list(caps.runtimes),
        "labels": dict(caps.labels),
        "slots": caps.slots,
        "in_use": len(agent.inflight),
        "version": caps.version,
        "reachable": caps.reachable,
        "seen_ago": max(0.0, now - agent.last_seen) if agent.last_seen else None,
    }


def sample_row(s: Telemetry) -> list[Any]:
    """One telemetry point: ``[ts, cpu %, memory %, hottest °C or None, watts or None, measured, running]``."""
    mem = 100.0 * s.memory_used / s.memory_total if s.memory_total else 0.0
    temp = max(s.temperatures.values()) if s.temperatures else None
    return [s.sampled_at, round(s.cpu_percent, 1), round(mem, 1), temp, s.power_watts, s.power_measured, s.running]
