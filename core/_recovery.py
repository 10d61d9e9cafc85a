"""Recovery: resuming runs from the run store, re-attaching to agents, regenerating lost outputs.

Functions over the state of :class:`~dagon.core.Engine` (and a :class:`RecoveryState` it holds),
sans-IO like it.

* **Restore** — a restarted coordinator rebuilds each unfinished run from its
  stored spec and every task's last stored state by *replaying* it: the run is
  set up as at submission, then each task that becomes ready takes its stored
  outcome — a success (with its output manifest) releases its dependents and
  may expand a dynamic map exactly as it did the first time. Succeeded tasks
  never run again. Attempts that were dispatched or running are kept with their
  agent and attempt number ("orphans") until that agent shows up again.
* **Re-attach** — when an agent announces itself, its orphans become its
  in-flight attempts again, and its results are accepted as usual. Heartbeats
  list the attempts an agent holds (queued, running, or finished with a result
  not yet acknowledged); an in-flight attempt it does not hold was lost (the
  agent restarted, or the assignment never arrived) and is requeued with a new
  attempt. An orphan whose agent does not come back within the heartbeat TTL is
  requeued too.
* **Regenerate** — outputs can vanish with an agent (lost, or its disk wiped).
  When an agent is lost, every succeeded task whose outputs lived only there
  and that a pending consumer still needs runs again; when a consumer reports
  that inputs could not be found or failed their sha256 check
  (``TaskResult.lost_inputs``), their producers run again and the consumer waits
  for them instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagon.core._events import Command, RunSubmitted, RunTransition
from dagon.core._patterns import match_outputs
from dagon.core._states import RunState, TaskState
from dagon.protocol import AgentId, OutputFile, ResultStatus, TaskName, TaskRef, TaskResult

if TYPE_CHECKING:
    from dagon.core._engine import Engine
    from dagon.core._model import Graph, Workflow
    from dagon.core._placement import AgentView
    from dagon.core._views import TaskView
    from dagon.protocol import RunId

__all__ = [
    "RecoveryState",
    "RestoreSummary",
    "StoredTask",
    "adopt",
    "inputs_lost",
    "orphans_tick",
    "reconcile",
    "regenerate_lost_with",
    "restore",
    "wait_for_return",
]

_S = TaskState
_ACTIVE = frozenset({_S.DISPATCHED, _S.RUNNING})

# (state, attempt, agent, cause, result document or None) — see RunStore.load
StoredTask = tuple[str, int, "str | None", str, "dict[str, Any] | None"]


@dataclass(slots=True)
class RestoreSummary:
    """What restoring one run found."""

    succeeded: int = 0  # kept, never run again
    reattached: int = 0  # dispatched or running on an agent: waiting for it to come back
    ended: int = 0  # failed or cancelled for good (kept as they are)
    to_run: int = 0  # ready now (never started, or lost)

    def __str__(self) -> str:
        return (
            f"{self.succeeded} succeeded (kept), {self.reattached} on agents (re-attaching),"
            f" {self.ended} ended, {self.to_run} to run"
        )


@dataclass(slots=True)
class RecoveryState:
    """What recovery remembers between events (held by the engine)."""

    # attempts waiting for their agent to come back, and until when they wait
    orphans: dict[AgentId, dict[TaskRef, TaskView]] = field(default_factory=dict)
    due: dict[AgentId, float] = field(default_factory=dict)
    lost_reason: dict[AgentId, str] = field(default_factory=dict)
    regenerated: int = 0  # succeeded tasks run again because their outputs were lost

    @property
    def next_due(self) -> float | None:
        return min(self.due.values(), default=None)


# -- restore ---------------------------------------------------------------


def restore(
    engine: Engine,
    run_id: RunId,
    workflow: Workflow,
    graph: Graph,
    tasks: Mapping[str, StoredTask],
    *,
    now: float,
    keep_scratch: bool = False,
    reopen: bool = False,
) -> tuple[list[Command], RestoreSummary]:
    """Rebuild a run from its stored task states (see the module docstring).

    ``reopen``: ``dagon resume``: tasks that failed or were cancelled run again, with
    attempt numbers continuing from the stored ones.

    Returns the commands to execute (the run's end, if every task had in fact
    ended) and a summary. Raises ValidationError if the spec no longer resolves.
    """
    engine._now = now
    saved, engine._out = engine._out, []
    summary = RestoreSummary()
    try:
        engine._on_submit(RunSubmitted(run_id, workflow, graph, keep_scratch=keep_scratch))
        run = engine.runs[run_id]
        for view in run.tasks.values():  # attempt numbers never repeat, whatever state a task is in
            stored = tasks.get(view.name)
            if stored is not None:
                view.attempt = max(view.attempt, stored[1])
        applied: set[str] = set()
        progress = True
        while progress:
            progress = False
            for view in list(run.tasks.values()):
                if view.state is not _S.READY or view.name in applied:
                    continue
                applied.add(view.name)
                stored = tasks.get(view.name)
                if stored is not None and _apply(engine, view, stored, reopen, summary):
                    progress = True
        summary.to_run = run.counts[_S.READY]
        if run.cause == "" and run.state is RunState.RUNNING:
            run.cause = "resumed"
    finally:
        restored, engine._out = engine._out, saved
    # Task transitions replayed here are already in the store; only the run's end (if all
    # tasks had ended before the restart) is new.
    out: list[Command] = [c for c in restored if isinstance(c, RunTransition) and c.new is not RunState.RUNNING]
    for agent in list(engine._recovery.orphans):
        known = engine.agents.get(agent)
        if known is not None and known.online:
            adopt(engine, known)  # already back (e.g. announced before this run was resumed)
        else:
            engine._recovery.due.setdefault(agent, now + engine.heartbeat_ttl)
    return out, summary


def _apply(engine: Engine, view: TaskView, stored: StoredTask, reopen: bool, summary: RestoreSummary) -> bool:
    """Give a ready task its stored outcome; True if that changed anything."""
    state_name, attempt, agent, cause, doc = stored
    state = TaskState(state_name)
    view.attempt = max(view.attempt, attempt)
    if state is _S.SUCCEEDED and agent:
        _restore_success(engine, view, AgentId(agent), doc or {})
        summary.succeeded += 1
        return True
    # Re-attach only when this coordinator's id ran it (a restart): reports of the attempt go to
    # that id's inbox. A run taken over (``reopen``) from another coordinator never hears of
    # them, so its attempts that were under way run again.
    if state in _ACTIVE and agent and not reopen:
        view.agent = AgentId(agent)
        view.dispatched_at = 0.0  # long ago: if the agent does not hold it, it is lost at once
        view.inherited = True
        engine._move(view, _S.DISPATCHED, cause)
        if state is _S.RUNNING:
            engine._move(view, _S.RUNNING, cause)
        ref = TaskRef(view.run.id, TaskName(view.name), view.attempt)
        engine._recovery.orphans.setdefault(AgentId(agent), {})[ref] = view
        summary.reattached += 1
        return True
    if reopen:
        return False  # failed, cancelled or never placed: runs (again)
    if state is _S.FAILED:
        engine._fail(view, cause)
        summary.ended += 1
        return True
    if state is _S.CANCELLED:
        engine._move(view, _S.CANCELLED, cause)
        summary.ended += 1
        return True
    return False


def _restore_success(engine: Engine, view: TaskView, agent: AgentId, doc: dict[str, Any]) -> None:
    run = view.run
    view.agent = agent
    view.host = str(doc.get("host") or "")
    view.workdir = str(doc.get("workdir") or "")
    view.exit_code = doc.get("exit_code")
    finished = engine._now
    view.started_at = finished - float(doc.get("duration") or 0.0)
    view.finished_at = finished
    energy = doc.get("energy") or {}
    outputs = tuple(
        OutputFile(str(o["path"]), int(o["size"]), str(o["sha256"]))
        for o in doc.get("outputs") or ()
        if isinstance(o, dict)
    )
    view.result = TaskResult(
        run.id, TaskName(view.name), view.attempt, ResultStatus.SUCCEEDED, view.exit_code,
        view.started_at, finished, cpu_time=float(doc.get("cpu_time") or 0.0),
        max_rss=int(doc.get("max_rss") or 0), workdir=view.workdir, outputs=outputs, value=doc.get("value"),
        energy_joules=float(energy.get("joules") or 0.0), power_watts=float(energy.get("watts") or 0.0),
        energy_measured=bool(energy.get("measured")), energy_source=str(energy.get("source") or ""),
    )  # fmt: skip
    view.restored = True
    engine._move(view, _S.DISPATCHED, "restored")
    engine._move(view, _S.SUCCEEDED, str(doc.get("cause") or "restored"))
    engine._release(view)
    engine.gc.succeeded(view, sum(o.size for o in outputs), engine._linked)  # deletions were sent before


# -- re-attach ---------------------------------------------------------------


def adopt(engine: Engine, agent: AgentView) -> None:
    """The agent is back: its restored attempts are in flight on it again."""
    orphans = engine._recovery.orphans.pop(agent.id, None)
    engine._recovery.due.pop(agent.id, None)
    engine._recovery.lost_reason.pop(agent.id, None)  # back in time: its outputs were not lost either
    if not orphans:
        return
    for ref, view in orphans.items():
        if view.state in _ACTIVE and view.attempt == ref.attempt and view.agent == agent.id:
            agent.inflight[ref] = view


def reconcile(engine: Engine, agent: AgentView, held: frozenset[TaskRef]) -> None:
    """Requeue in-flight attempts the agent says it does not hold (past the assignment grace)."""
    cutoff = engine._now - engine.lost_assignment_grace
    for ref, view in list(agent.inflight.items()):
        if ref in held or view.dispatched_at >= cutoff:
            continue
        del agent.inflight[ref]
        if view.state in _ACTIVE and view.attempt == ref.attempt and view.agent == agent.id:
            engine._requeue(view, f"agent {agent.id} does not hold attempt {ref.attempt} (lost)")


def wait_for_return(engine: Engine, agent: AgentView, reason: str) -> None:
    """The agent is lost; its attempts wait ``requeue_grace`` seconds for it to come back
    (a Wi-Fi drop) before they run elsewhere — its results meanwhile are accepted."""
    inflight, agent.inflight = agent.inflight, {}
    engine._recovery.orphans.setdefault(agent.id, {}).update(inflight)
    engine._recovery.due[agent.id] = engine._now + engine.requeue_grace
    engine._recovery.lost_reason[agent.id] = reason


def orphans_tick(engine: Engine) -> None:
    now = engine._now
    expired = [agent for agent, due in engine._recovery.due.items() if due <= now]
    for agent in expired:
        del engine._recovery.due[agent]
        refs = engine._recovery.orphans.pop(agent, {})
        reason = engine._recovery.lost_reason.pop(agent, "")
        if reason:
            why = f"agent {agent} lost ({reason}) and not back within {engine.requeue_grace:.0f} s"
        else:  # restored after a coordinator restart
            why = f"agent {agent} did not come back within {engine.heartbeat_ttl:.0f} s"
        for ref, view in refs.items():
            if view.state in _ACTIVE and view.attempt == ref.attempt and view.agent == agent:
                engine._requeue(view, why)
        if reason:
            regenerate_lost_with(engine, agent, reason)


# -- regenerate ----------------------------------------------------------------


def regenerate_lost_with(engine: Engine, agent: AgentId, reason: str) -> None:
    """Outputs that lived only on ``agent`` and that pending consumers need: run their producers again.

    Outputs on a host another online agent shares stay reachable (staged locally there); a
    consumer placed elsewhere that then cannot pull them reports them lost (``_inputs_lost``).
    """
    lost = engine.agents.get(agent)
    host = lost.capabilities.host_id if lost is not None else ""
    if host and any(a.online and a.capabilities.host_id == host for a in engine.agents.values()):
        return
    for run in engine.runs.values():
        if run.state is not RunState.RUNNING:
            continue
        for view in list(run.tasks.values()):
            if (
                view.state is _S.SUCCEEDED
                and view.agent == agent
                and not (view.spec.checkpoint and engine.durable_checkpoints)
                and any(c.state in (_S.PENDING, _S.READY) and c.run is run for c in view.dependents)
            ):
                _regenerate(engine, view, f"its outputs were lost with agent {agent} ({reason})")


def _regenerate(engine: Engine, producer: TaskView, cause: str) -> bool:
    """Run a succeeded task again; its unfinished consumers wait for the new attempt."""
    if producer.state is not _S.SUCCEEDED or producer.run.state is not RunState.RUNNING:
        return False
    run = producer.run
    run.unfinished += 1  # leaves a terminal state
    engine._recovery.regenerated += 1
    for child in producer.dependents:
        if child.state is _S.READY:
            engine._move(child, _S.PENDING, f"waiting for {producer.name!r} to be regenerated")
        if child.state is _S.PENDING:
            child.waiting += 1
    producer.result = None
    producer.finished_at = None
    producer.restored = False
    engine._make_ready(producer, cause)
    return True


def inputs_lost(engine: Engine, view: TaskView, lost: tuple[str, ...], agent: AgentId) -> bool:
    """A consumer could not stage outputs of ``lost``: regenerate them and let it wait.

    Returns False (the failure stands) when none of them can be regenerated.
    """
    run = view.run
    producers = [run.tasks[name] for name in lost if name in run.tasks]
    deps = run.graph.deps.get(view.name, frozenset())
    redo = [p for p in producers if p.state is _S.SUCCEEDED and p.name in deps and _produced(view, p)]
    if not redo:
        return False
    view.lost += 1
    if view.lost > engine.max_lost:
        return False
    cause = f"inputs from {', '.join(repr(p.name) for p in redo)} were missing or corrupt on {agent}"
    engine._move(view, _S.PENDING, cause)
    for producer in redo:
        _regenerate(engine, producer, f"regenerating outputs {view.name!r} could not stage")
    return True


def _produced(consumer: TaskView, producer: TaskView) -> bool:
    """Whether ``producer``'s manifest had what ``consumer`` reads: only then was it lost (a path
    it never produced is a mistake in the workflow; running the producer again would not help)."""
    if producer.restored:
        return True  # its manifest was not kept in memory: the agent checked the files against it
    if producer.result is None:
        return False  # a success that said nothing more: it had no outputs
    paths = [o.path for o in producer.result.outputs]
    refs = [r for r in consumer.run.graph.refs_of(consumer.name) if r.task == producer.name]
    return any(match_outputs(r.path, paths) or any(p.startswith(r.path.rstrip("/") + "/") for p in paths) for r in refs)
