"""The sans-IO engine: ``handle(event, now) -> commands`` and ``schedule(now)``.

No awaits, no clocks, no I/O. The async coordinator feeds it events decoded from
the broker, calls :meth:`Engine.schedule` once per coalesced wake-up, and
executes the commands it returns.

Invariants:
    * readiness is a counter of unfinished dependencies, decremented when a
      dependency succeeds — nothing polls;
    * every state change goes through :meth:`Engine._move`, which checks the
      legal-transition table and records the cause;
    * an attempt number fences results: a report for anything but the task's
      current attempt is ignored (it only frees the agent's slot).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Mapping

from dagon.core import _linking, _recovery
from dagon.core._errors import IllegalTransition, RunNotFound, ValidationError
from dagon.core._events import (
    AgentAnnounced,
    AgentChanged,
    AgentOffline,
    AgentSeen,
    CancelAttempt,
    Command,
    Dispatch,
    Event,
    RunCancelRequested,
    RunSubmitted,
    RunTransition,
    TaskFinished,
    TaskRejected,
    TaskStarted,
    TaskTransition,
    TaskWaiting,
    Tick,
)
from dagon.core._fit import Scored, fits_now, waiting_reason
from dagon.core._linking import input_hosts, locality, stage_inputs
from dagon.core._model import Graph, Workflow
from dagon.core._placement import AgentView, Placement
from dagon.core._recovery import RecoveryState, RestoreSummary, StoredTask
from dagon.core._scratch import ScratchGC
from dagon.core._silence import SilenceWatch
from dagon.core._states import LEGAL, TERMINAL, RunState, TaskState
from dagon.core._views import RunView, TaskView
from dagon.protocol import (
    AgentId,
    ResultStatus,
    RunId,
    TaskAssignment,
    TaskName,
    TaskRef,
    TaskResult,
)

__all__ = ["Engine"]

_S = TaskState
_ACTIVE = frozenset({_S.DISPATCHED, _S.RUNNING})


class Engine:
    """Holds every active run and decides what happens next.

    Args:
        placement: the policy choosing an agent for a ready task.
        heartbeat_ttl: an agent silent for this long is considered lost.
        max_lost: how many times a task may be lost with its agent before it fails.
        lost_assignment_grace: seconds after which a dispatched attempt that an
            idle agent (heartbeat: holds nothing) never started is sent again.
        rng: randomness for retry jitter (seed it in tests).
        requeue_grace: seconds the attempts of a lost agent wait for it to come back before
            they run elsewhere (0: at once). An agent cut off the broker keeps running its
            tasks and delivers their results when it reconnects; within the grace period they
            are used, and nothing runs twice.
    """

    def __init__(
        self,
        *,
        placement: Placement | None = None,
        heartbeat_ttl: float = 15.0,
        max_lost: int = 3,
        lost_assignment_grace: float = 30.0,
        rng: random.Random | None = None,
        requeue_grace: float = 0.0,
    ) -> None:
        if heartbeat_ttl <= 0:
            raise ValueError("heartbeat_ttl must be positive")
        self.placement: Placement = placement or Scored()
        self.heartbeat_ttl = heartbeat_ttl
        self.max_lost = max_lost
        self.lost_assignment_grace = lost_assignment_grace
        if requeue_grace < 0:
            raise ValueError("requeue_grace must be >= 0")
        self.requeue_grace = requeue_grace
        self._rng = rng or random.Random()
        self.runs: dict[RunId, RunView] = {}
        self.agents: dict[AgentId, AgentView] = {}
        self._ready: deque[TaskView] = deque()
        self._timers: list[tuple[float, int, TaskView, int]] = []
        self._seq = 0
        self._out: list[Command] = []
        self._now = 0.0
        self.ignored_reports = 0
        self._named: dict[str, RunId] = {}  # workflow name -> its latest run (meta-workflow references)
        self.gc = ScratchGC()  # reference counts of workflow:// consumers, scratch footprints
        self._recovery = RecoveryState()  # see dagon.core._recovery
        self._shut_down: set[AgentId] = set()  # agents that said goodbye (not revived by a late heartbeat)
        self._silence = SilenceWatch()  # the agents' heartbeat deadlines, not scanned on every pass
        # Outputs of ``checkpoint`` tasks are copied to durable storage (the coordinator sets
        # this when it has some): they are not regenerated when their agent is lost.
        self.durable_checkpoints = False

    # -- queries -------------------------------------------------------------

    def run(self, run: RunId) -> RunView:
        try:
            return self.runs[run]
        except KeyError:
            raise RunNotFound(run) from None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def next_deadline(self, now: float | None = None) -> float | None:
        """When :class:`Tick` next has something to do (None: nothing pending). Given ``now``, the
        agents' heartbeat deadlines may come from a scan up to a second old, and then only early
        (see :mod:`dagon.core._silence`)."""
        deadline = self._timers[0][0] if self._timers else None
        for due in (self._recovery.next_due, self._silence.due(self.agents, self.heartbeat_ttl, now)):
            if due is not None:
                deadline = due if deadline is None else min(deadline, due)
        return deadline

    @property
    def orphans_due(self) -> float | None:
        """When the first restored or lost agent's attempts stop waiting for it (None: none wait)."""
        return self._recovery.next_due

    @property
    def regenerated(self) -> int:
        """Succeeded tasks run again because their outputs were lost."""
        return self._recovery.regenerated

    def check_references(self, workflow: Workflow, graph: Graph) -> None:
        """Raise ValidationError if a reference to another workflow names no known run or task."""
        _linking.check_references(self, workflow, graph)

    def restore(
        self,
        run_id: RunId,
        workflow: Workflow,
        graph: Graph,
        tasks: Mapping[str, StoredTask],
        *,
        now: float,
        keep_scratch: bool = False,
        reopen: bool = False,
    ) -> tuple[list[Command], RestoreSummary]:
        """Rebuild a run from its stored task states (see :func:`dagon.core._recovery.restore`)."""
        return _recovery.restore(
            self, run_id, workflow, graph, tasks, now=now, keep_scratch=keep_scratch, reopen=reopen
        )

    def forget(self, run: RunId) -> None:
        """Drop a finished run from memory (its results live in the run store)."""
        view = self.runs.get(run)
        if view is not None and view.state is not RunState.RUNNING:
            del self.runs[run]
            self.gc.forget(run)
            if self._named.get(view.workflow.name) == run:
                del self._named[view.workflow.name]

    # -- events --------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Command]:
        self._now = now
        match event:
            case TaskFinished():
                self._on_finished(event)
            case TaskStarted():
                self._on_started(event)
            case AgentSeen():
                agent = self.agents.get(event.agent)
                if agent is not None:
                    agent.last_seen = now
                    if not agent.online and agent.id not in self._shut_down:
                        # Lost by its heartbeat TTL (or Last Will), yet still talking: it is back. It
                        # does not know it was given up, so it would not announce itself again.
                        agent.online = True
                        self._out.append(AgentChanged(agent.id, True, "heard from again"))
                        _recovery.adopt(self, agent)
                    if event.refs is not None:
                        if agent.inflight:
                            _recovery.reconcile(self, agent, event.refs)
                    elif event.held == 0 and agent.inflight:
                        self._reclaim_lost_assignments(agent)
            case RunSubmitted():
                self._on_submit(event)
            case RunCancelRequested():
                self._on_cancel(event)
            case AgentAnnounced():
                self._on_announce(event)
            case AgentOffline():
                if event.reason == "shutdown":
                    self._shut_down.add(event.agent)
                # A clean shutdown will not come back soon; a Last Will may be a broker restart.
                self._agent_lost(event.agent, event.reason, grace=event.reason != "shutdown")
            case TaskRejected():
                self._on_rejected(event)
            case Tick():
                self._on_tick()
        out, self._out = self._out, []
        return out

    def _on_submit(self, event: RunSubmitted) -> None:
        if event.run in self.runs:
            raise ValidationError(f"run {event.run!r} already exists")
        links = _linking.resolve_external(self, event.workflow.name, event.graph)
        run = RunView(id=event.run, workflow=event.workflow, graph=event.graph, submitted_at=self._now)
        tasks = run.tasks
        for name in event.graph.order:
            tasks[name] = TaskView(event.workflow[name], run)
        for name, deps in event.graph.deps.items():
            view = tasks[name]
            view.waiting = len(deps)
            for dep in deps:
                tasks[dep].dependents.append(view)
        run.counts[_S.PENDING] = len(tasks)
        run.unfinished = len(tasks)
        self.runs[event.run] = run
        self._named[event.workflow.name] = event.run
        self.gc.submitted(run, keep_scratch=event.keep_scratch)
        self._out.append(RunTransition(run.id, RunState.RUNNING, "submitted", self._now, run))
        if links:
            _linking.link_external(self, run, links)
        for name in event.graph.order:
            view = tasks[name]
            if view.waiting == 0 and view.state is _S.PENDING:
                self._make_ready(view, "no dependencies")

    def _on_cancel(self, event: RunCancelRequested) -> None:
        run = self.run(event.run)
        if run.state is not RunState.RUNNING:
            return
        run.cancelled = True
        for view in run.tasks.values():
            if view.state in TERMINAL:
                continue
            if view.state in _ACTIVE and view.agent is not None:
                ref = TaskRef(run.id, TaskName(view.name), view.attempt)
                self._out.append(CancelAttempt(view.agent, ref, event.reason))
            self._move(view, _S.CANCELLED, event.reason)

    def _on_announce(self, event: AgentAnnounced) -> None:
        agent = self.agents.get(event.agent)
        if agent is None:
            agent = self.agents[event.agent] = AgentView(event.agent, event.capabilities)
        else:
            agent.capabilities = event.capabilities
        agent.last_seen = self._now
        self._shut_down.discard(event.agent)
        if not agent.online:
            agent.online = True
            self._out.append(AgentChanged(event.agent, True, "announced"))
        _recovery.adopt(self, agent)

    def _on_started(self, event: TaskStarted) -> None:
        view = self._current(event.ref, event.agent)
        if view is None:
            return
        view.started_at = event.started_at
        view.workdir = event.workdir
        if view.state is _S.DISPATCHED:
            self._move(view, _S.RUNNING, f"started on {event.agent}")

    def _on_finished(self, event: TaskFinished) -> None:
        result = event.result
        ref = TaskRef(result.run, result.task, result.attempt)
        agent = self.agents.get(event.agent)
        if agent is not None:
            agent.last_seen = self._now
            agent.inflight.pop(ref, None)
        view = self._current(ref, event.agent)
        if view is None:
            return
        view.result = result if _keep(result) else None
        view.exit_code = result.exit_code
        view.started_at = result.started_at
        view.finished_at = result.finished_at
        if result.workdir:
            view.workdir = result.workdir
        status = result.status
        if status is ResultStatus.SUCCEEDED:
            staging = f"; {result.staging}" if result.staging else ""
            self._move(view, _S.SUCCEEDED, f"exit code {result.exit_code} on {event.agent}{staging}")
            self._release(view)
            self._out.extend(self.gc.succeeded(view, sum(f.size for f in result.outputs), self._linked))
            return
        if result.lost_inputs and _recovery.inputs_lost(self, view, result.lost_inputs, event.agent):
            return
        if status is ResultStatus.CANCELLED:
            # We did not ask for it (run cancellation moves tasks first), so the
            # agent gave it up — typically shutting down. Run it elsewhere.
            self._requeue(view, f"cancelled by agent {event.agent}")
            return
        why = _describe_failure(result)
        if view.attempt <= view.spec.retry.attempts:
            retry = view.spec.retry
            delay = min(retry.max_backoff, retry.backoff * 2 ** (view.attempt - 1))
            delay *= self._rng.uniform(0.5, 1.0)
            self._move(view, _S.RETRY_WAIT, f"{why}; retry in {delay:.1f} s")
            self._seq += 1
            heapq.heappush(self._timers, (self._now + delay, self._seq, view, view.attempt))
            return
        self._fail(view, why)

    def _release(self, view: TaskView) -> None:
        """``view`` succeeded: a dependent whose last dependency it was becomes ready."""
        for child in view.dependents:
            child.waiting -= 1
            if child.waiting == 0 and child.state is _S.PENDING:
                self._make_ready(child, "dependencies succeeded")

    def _on_rejected(self, event: TaskRejected) -> None:
        rejection = event.rejection
        agent = self.agents.get(event.agent)
        if agent is not None:
            agent.inflight.pop(rejection.task, None)
            # The agent is fuller than we thought; leave it alone for a moment.
            agent.blocked_until = self._now + 0.2
        view = self._current(rejection.task, event.agent)
        if view is None:
            return
        if rejection.permanent:
            self._fail(view, f"agent {event.agent} refused it: {rejection.reason}")
        else:
            self._move(view, _S.READY, f"agent {event.agent} refused it: {rejection.reason}")
            self._ready.append(view)

    def _on_tick(self) -> None:
        now = self._now
        while self._timers and self._timers[0][0] <= now:
            _, _, view, attempt = heapq.heappop(self._timers)
            if view.state is _S.RETRY_WAIT and view.attempt == attempt:
                self._make_ready(view, f"retrying (attempt {attempt + 1})")
        _recovery.orphans_tick(self)
        for agent in list(self.agents.values()):
            if agent.online and now - agent.last_seen > self.heartbeat_ttl:
                # silent for the whole TTL already: no further grace
                self._agent_lost(agent.id, f"no heartbeat for {now - agent.last_seen:.0f} s", grace=False)

    # -- scheduling ----------------------------------------------------------

    def schedule(self, now: float) -> list[Command]:
        """Place ready tasks on agents with free slots; returns Dispatch commands."""
        self._now = now
        ready = self._ready
        if ready:
            available = [a for a in self.agents.values() if a.online and a.free > 0 and a.blocked_until <= now]
            if available:
                self._place(ready, available)
            elif ready:
                self._explain(ready[0], silent_busy=True)
        out, self._out = self._out, []
        return out

    def _place(self, ready: deque[TaskView], available: list[AgentView]) -> None:
        skipped: list[TaskView] = []
        unplaceable: dict[tuple[object, ...], str] = {}  # constraints -> why they wait (this pass)
        for _ in range(len(ready)):
            if not available:
                break
            view = ready.popleft()
            if view.state is not _S.READY:
                continue  # stale queue entry (cancelled or failed meanwhile)
            spec = view.spec
            hosts = input_hosts(view)
            colocated = self._colocated(view)
            key = (spec.runtime, spec.agent, tuple(spec.labels.items()), spec.cpus, spec.memory, spec.arch, colocated)
            if key in unplaceable:
                skipped.append(view)
                self._explain(view, reason=unplaceable[key])
                continue
            fitting = [a for a in available if fits_now(spec, a) and (colocated is None or a.id == colocated)]
            agent = None
            if fitting:
                agent = self.placement.choose(spec, fitting, input_hosts=hosts, locality=locality(view))
            if agent is None:
                skipped.append(view)
                unplaceable[key] = self._explain(view)
                continue
            self._dispatch(view, agent)
            if agent.free <= 0:
                available.remove(agent)
        ready.extendleft(reversed(skipped))

    def _colocated(self, view: TaskView) -> AgentId | None:
        """The agent a ``colocate`` task must run on (its partner is a dependency, so it ran)."""
        name = view.spec.colocate
        partner = view.run.tasks.get(name) if name else None
        return partner.agent if partner is not None else None

    def _explain(self, view: TaskView, *, silent_busy: bool = False, reason: str = "") -> str:
        """Record why a ready task waits; emit a TaskWaiting event when the reason changed.

        Plain queueing (every agent full) only updates the cause of the queue's head
        (``silent_busy``): an event per queued task would double the events of a fan-out.
        Returns the reason (``reason``, if given, is one already worked out this pass).
        """
        if view.state is not _S.READY:
            return reason  # a stale queue entry (cancelled or failed meanwhile)
        reason = reason or waiting_reason(view.spec, self.agents.values(), self._now, self._colocated(view))
        if reason == view.cause:
            return reason
        view.cause = reason
        if not (silent_busy and reason.endswith("busy")):
            self._out.append(TaskWaiting(view.run.id, view.name, view.attempt, reason, self._now))
        return reason

    def _linked(self, producer: TaskView) -> bool:
        """Whether a running run other than the producer's reads it (meta-workflow link)."""
        for run in self.runs.values():
            if run is not producer.run and run.state is RunState.RUNNING and producer in run.external.values():
                return True
        return False

    def _dispatch(self, view: TaskView, agent: AgentView) -> None:
        view.attempt += 1
        view.inherited = False
        view.dispatched_at = self._now
        view.agent = agent.id
        view.host = agent.capabilities.host_id
        spec = view.spec
        run = view.run
        assignment = TaskAssignment(
            run=run.id,
            workflow=run.workflow.name,
            task=TaskName(spec.name),
            attempt=view.attempt,
            runtime=spec.runtime,
            command=spec.command,
            args=spec.args,
            kwargs=dict(spec.kwargs),
            env=dict(spec.env),
            timeout=spec.timeout,
            inputs=stage_inputs(view),
            outputs=spec.outputs,
            stage_mode=spec.stage_mode,
            cpus=float(spec.cpus),
            memory=spec.memory,
            runtime_options=dict(spec.runtime_options),
        )
        agent.inflight[assignment.ref] = view
        self._move(view, _S.DISPATCHED, f"placed on {agent.id}")
        self._out.append(Dispatch(agent.id, assignment))

    # -- transitions ---------------------------------------------------------

    def _current(self, ref: TaskRef, agent: AgentId) -> TaskView | None:
        """The task a report is about, or None if the report is stale (fencing)."""
        run = self.runs.get(ref.run)
        view = run.tasks.get(ref.task) if run is not None else None
        if view is None or view.attempt != ref.attempt or view.agent != agent or view.state not in _ACTIVE:
            self.ignored_reports += 1
            return None
        return view

    def _make_ready(self, view: TaskView, cause: str) -> None:
        if view.spec.map_over:
            _linking.expand(self, view)
            return
        self._move(view, _S.READY, cause)
        self._ready.append(view)

    def _requeue(self, view: TaskView, cause: str) -> None:
        view.lost += 1
        if view.lost > self.max_lost:
            self._fail(view, f"{cause}; lost {view.lost} times, giving up")
            return
        self._make_ready(view, cause)

    def _fail(self, view: TaskView, cause: str) -> None:
        self._move(view, _S.FAILED, cause)
        self._fail_dependents(view)

    def _fail_dependents(self, view: TaskView) -> None:
        """Every pending task downstream of ``view`` can never run: upstream_failed."""
        stack = list(view.dependents)
        while stack:
            child = stack.pop()
            if child.state is _S.PENDING:
                self._move(child, _S.UPSTREAM_FAILED, f"upstream task {view.name!r} failed")
                stack.extend(child.dependents)

    def _reclaim_lost_assignments(self, agent: AgentView) -> None:
        """The agent holds nothing, yet attempts sent to it long ago never started:
        those assignments were lost (e.g. published while it was resubscribing
        after a broker restart). Reports still in flight are fenced if they come."""
        cutoff = self._now - self.lost_assignment_grace
        for ref, view in list(agent.inflight.items()):
            # An attempt inherited from before a restart that the agent does not hold is lost
            # even if it had started.
            current = view.attempt == ref.attempt and view.dispatched_at < cutoff
            if current and (view.state is _S.DISPATCHED or view.inherited):
                del agent.inflight[ref]
                if view.inherited:
                    self._requeue(view, f"agent {agent.id} does not hold it any more")
                else:
                    self._requeue(view, f"assignment never reached agent {agent.id}")

    def _agent_lost(self, agent_id: AgentId, reason: str, *, grace: bool = True) -> None:
        agent = self.agents.get(agent_id)
        if agent is None or not agent.online:
            return
        agent.online = False
        self._out.append(AgentChanged(agent_id, False, reason))
        if grace and self.requeue_grace > 0:
            _recovery.wait_for_return(self, agent, reason)
            return
        inflight, agent.inflight = agent.inflight, {}
        for ref, view in inflight.items():
            if view.attempt == ref.attempt and view.agent == agent_id and view.state in _ACTIVE:
                self._requeue(view, f"agent {agent_id} lost ({reason})")
        _recovery.regenerate_lost_with(self, agent_id, reason)

    def _move(self, view: TaskView, new: TaskState, cause: str) -> None:
        old = view.state
        if new not in LEGAL[old]:
            raise IllegalTransition(view.name, old, new)
        view.state = new
        view.cause = cause
        run = view.run
        run.counts[old] -= 1
        run.counts[new] += 1
        self._out.append(TaskTransition(run.id, view.name, old, new, view.attempt, view.agent, cause, self._now, view))
        if new in TERMINAL:
            if view.finished_at is None:
                view.finished_at = self._now
            run.unfinished -= 1
            if run.unfinished == 0:
                self._finish_run(run)

    def _finish_run(self, run: RunView) -> None:
        if run.cancelled:
            run.state = RunState.CANCELLED
            run.cause = "cancelled"
        elif run.counts[_S.SUCCEEDED] == len(run.tasks):
            run.state = RunState.SUCCEEDED
            run.cause = f"all {len(run.tasks)} tasks succeeded"
        else:
            run.state = RunState.FAILED
            failed = [v.name for v in run.tasks.values() if v.state is _S.FAILED]
            run.cause = f"{len(failed)} task(s) failed: {', '.join(failed[:5])}" + ("…" if len(failed) > 5 else "")
        run.finished_at = self._now
        self._out.append(RunTransition(run.id, run.state, run.cause, self._now, run))


def _keep(result: TaskResult) -> bool:
    """Whether a result holds more than its exit code and times (which the view keeps).

    A plain success of a python step carries nothing else; not keeping those
    saves ~250 bytes per task in runs of 100,000 tiny tasks.
    """
    return not (
        result.status is ResultStatus.SUCCEEDED
        and not result.outputs
        and not result.stderr_tail
        and not result.error
        and result.value is None
        and not result.cpu_time
        and not result.energy_joules
        and not result.max_rss
    )


def _describe_failure(result: TaskResult) -> str:
    if result.status is ResultStatus.TIMEOUT:
        return "timed out"
    if result.status is ResultStatus.ERROR:
        return f"could not run: {result.error}"
    return f"exit code {result.exit_code}"
