"""What users get back: events, per-task outcomes, run results — and their
public JSON documents (schemas in docs/mqtt-topics.md)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagon.core._attempts import SHOWN_IN_STATUS, PastAttempt
from dagon.core._errors import TaskFailed
from dagon.core._states import TERMINAL, RunState, TaskState
from dagon.core._views import RunView, TaskView
from dagon.protocol import SCHEMA_RUN_STATUS, SCHEMA_TASK_RESULT, OutputFile

if TYPE_CHECKING:
    from dagon.core._store import StoredRun

__all__ = ["RunEvent", "RunResult", "TaskOutcome", "run_status_doc", "stored_status_doc", "task_result_doc"]


@dataclass(frozen=True, slots=True)
class RunEvent:
    """A state change of a run or of one of its tasks.

    ``task`` is None for run-level events; ``state`` is a TaskState value for
    task events and a RunState value for run events.
    """

    run: str
    task: str | None
    state: str
    old: str | None
    attempt: int
    agent: str | None
    cause: str
    at: float

    def to_doc(self) -> dict[str, Any]:
        return {
            "type": "task" if self.task is not None else "run",
            "task": self.task,
            "state": self.state,
            "old": self.old,
            "attempt": self.attempt,
            "agent": self.agent,
            "cause": self.cause,
            "at": self.at,
        }

    @classmethod
    def from_doc(cls, run: str, doc: Mapping[str, Any]) -> RunEvent:
        return cls(
            run=run,
            task=doc.get("task"),
            state=str(doc.get("state")),
            old=doc.get("old"),
            attempt=int(doc.get("attempt") or 0),
            agent=doc.get("agent"),
            cause=str(doc.get("cause", "")),
            at=float(doc.get("at") or 0.0),
        )


def _duration(view: TaskView) -> float | None:
    if view.exit_code is None and view.result is None:
        return None  # never reported back by an agent
    if view.started_at is None or view.finished_at is None:
        return None
    return max(0.0, view.finished_at - view.started_at)


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How a task ended (or where it is, for a run still in progress): what users read in a
    :class:`RunResult`, built from the engine's view and the agent's last ``TaskResult``.

    ``retries``: the attempts before the last one and why each did not count (the latest
    :data:`~dagon.core._attempts.KEPT_PER_TASK`); empty when the task ran once.
    """

    name: str
    state: TaskState
    attempt: int
    agent: str | None
    exit_code: int | None = None
    duration: float | None = None
    cpu_time: float = 0.0
    max_rss: int = 0
    workdir: str = ""
    outputs: tuple[OutputFile, ...] = ()
    stderr_tail: str = ""
    error: str = ""
    cause: str = ""
    value: Any = None
    retries: tuple[PastAttempt, ...] = ()

    @property
    def ok(self) -> bool:
        return self.state is TaskState.SUCCEEDED

    def reason(self) -> str:
        """One line saying why the task did not succeed."""
        if self.state is TaskState.FAILED:
            tail = self.stderr_tail.strip().splitlines()[-1:] if self.stderr_tail.strip() else []
            return self.cause + (f" — {tail[0][:200]}" if tail else "")
        return self.cause or self.state.value

    @classmethod
    def from_view(cls, view: TaskView) -> TaskOutcome:
        result = view.result
        return cls(
            name=view.name,
            state=view.state,
            attempt=view.attempt,
            agent=view.agent,
            exit_code=view.exit_code,
            duration=_duration(view),
            cpu_time=result.cpu_time if result else 0.0,
            max_rss=result.max_rss if result else 0,
            workdir=view.workdir,
            outputs=result.outputs if result else (),
            stderr_tail=result.stderr_tail if result else "",
            error=result.error if result else "",
            cause=view.cause,
            value=result.value if result else None,
            retries=tuple(view.run.retries.get(view.name, ())),
        )

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> TaskOutcome:
        return cls(
            name=str(doc["task"]),
            state=TaskState(doc["state"]),
            attempt=int(doc.get("attempt") or 0),
            agent=doc.get("agent"),
            exit_code=doc.get("exit_code"),
            duration=doc.get("duration"),
            cpu_time=float(doc.get("cpu_time") or 0.0),
            max_rss=int(doc.get("max_rss") or 0),
            workdir=str(doc.get("workdir") or ""),
            outputs=tuple(OutputFile(o["path"], o["size"], o["sha256"]) for o in doc.get("outputs") or ()),
            stderr_tail=str(doc.get("stderr_tail") or ""),
            error=str(doc.get("error") or ""),
            cause=str(doc.get("cause") or ""),
            value=doc.get("value"),
            retries=tuple(PastAttempt.from_doc(p) for p in doc.get("retries") or ()),
        )


class _Outcomes(Mapping[str, TaskOutcome]):
    """Task outcomes built on access: a 100,000-task run need not hold them all twice."""

    __slots__ = ("_views",)

    def __init__(self, views: Mapping[str, TaskView]) -> None:
        self._views = views

    def __getitem__(self, name: str) -> TaskOutcome:
        return TaskOutcome.from_view(self._views[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __repr__(self) -> str:
        return f"<{len(self)} task outcomes>"


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of a run: its state and every task's outcome."""

    run: str
    workflow: str
    state: RunState
    cause: str
    tasks: Mapping[str, TaskOutcome] = field(default_factory=dict)
    submitted_at: float = 0.0
    finished_at: float | None = None
    scratch_peak: Mapping[str, int] = field(default_factory=dict)  # agent -> peak bytes of outputs in scratch

    @property
    def ok(self) -> bool:
        return self.state is RunState.SUCCEEDED

    @property
    def failed(self) -> dict[str, TaskOutcome]:
        return {n: t for n, t in self.tasks.items() if t.state is not TaskState.SUCCEEDED}

    def raise_for_status(self) -> RunResult:
        """Raise :class:`TaskFailed` unless every task succeeded."""
        if not self.ok:
            raise TaskFailed(self.workflow, {n: t.reason() for n, t in self.failed.items()} or {"run": self.cause})
        return self

    def __getitem__(self, task: str) -> TaskOutcome:
        return self.tasks[task]

    @classmethod
    def from_view(cls, view: RunView) -> RunResult:
        return cls(
            run=view.id,
            workflow=view.workflow.name,
            state=view.state,
            cause=view.cause,
            tasks=_Outcomes(view.tasks),
            submitted_at=view.submitted_at,
            finished_at=view.finished_at,
            scratch_peak=dict(view.scratch_peak),
        )


def run_status_doc(view: RunView, *, coordinator: str, results_retained: bool = True) -> dict[str, Any]:
    """The public status of a run; ``results_retained``: its per-task results are retained on the
    broker (false once the run left the coordinator's memory: they were cleared)."""
    return {
        "schema": SCHEMA_RUN_STATUS,
        "run": view.id,
        "workflow": view.workflow.name,
        "coordinator": coordinator,
        "state": view.state.value,
        "cause": view.cause,
        "tasks": len(view.tasks),
        "counts": {state.value: n for state, n in view.counts.items() if n},
        "submitted_at": view.submitted_at,
        "finished_at": view.finished_at,
        "scratch_peak": dict(view.scratch_peak),
        "results_retained": results_retained,
        "retried_tasks": len(view.retries),
        "retried": [_retried_doc(view.tasks[name]) for name in list(view.retries)[-SHOWN_IN_STATUS:]],
    }


def stored_status_doc(stored: StoredRun, *, coordinator: str) -> dict[str, Any]:
    """The public status of a run that ended, from the run store (a restarted coordinator
    publishes it again); its per-task results are not said to be retained."""
    counts: dict[str, int] = {}
    for state, *_ in stored.tasks.values():
        counts[state] = counts.get(state, 0) + 1
    record = stored.record
    return {
        "schema": SCHEMA_RUN_STATUS,
        "run": record.id,
        "workflow": record.workflow,
        "coordinator": coordinator,
        "state": record.state,
        "cause": record.cause,
        "tasks": len(stored.spec.get("tasks", ())) or len(stored.tasks),
        "counts": counts,
        "submitted_at": record.submitted_at,
        "finished_at": record.finished_at,
        "results_retained": False,
        "retried_tasks": len({row[1] for row in stored.retried}),
    }


def _retried_doc(view: TaskView) -> dict[str, Any]:
    """A task that ran (or was placed) more than once: where it is now, and its earlier attempts."""
    return {
        "name": view.name,
        "state": view.state.value,
        "attempt": view.attempt,
        "agent": view.agent,
        "cause": view.cause,
        "retries": [past.to_doc() for past in view.run.retries.get(view.name, ())],
    }


def task_result_doc(view: TaskView) -> dict[str, Any]:
    assert view.state in TERMINAL
    out = TaskOutcome.from_view(view)
    return {
        "schema": SCHEMA_TASK_RESULT,
        "run": view.run.id,
        "workflow": view.run.workflow.name,
        "task": out.name,
        "state": out.state.value,
        "attempt": out.attempt,
        "agent": out.agent,
        "host": view.host,
        "exit_code": out.exit_code,
        "duration": out.duration,
        "cpu_time": out.cpu_time,
        "max_rss": out.max_rss,
        "workdir": out.workdir,
        "outputs": [{"path": o.path, "size": o.size, "sha256": o.sha256} for o in out.outputs],
        "stderr_tail": out.stderr_tail,
        "error": out.error,
        "cause": out.cause,
        "value": out.value,
        "energy": _energy_doc(view),
        "retries": [past.to_doc() for past in out.retries],
    }


def _energy_doc(view: TaskView) -> dict[str, Any] | None:
    """Energy of the task's last attempt (``None`` when the agent measured or modelled none)."""
    r = view.result
    if r is None or not r.energy_joules:
        return None
    return {"joules": r.energy_joules, "watts": r.power_watts, "measured": r.energy_measured, "source": r.energy_source}
