"""Observers of a coordinator: run and task changes and agent telemetry, as they happen.

Listeners are called synchronously from the coordinator's loops, so a listener must
only record what it is told (append to a buffer, bump a gauge) and return; slow work
(I/O) belongs in the listener's own background task. An exception raised by a
listener is logged and otherwise ignored: an observer never stops scheduling.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from dagon.core._events import AgentChanged, RunTransition, TaskTransition
from dagon.core._states import RunState, TaskState
from dagon.core._views import RunView, TaskView
from dagon.protocol import TaskResult, Telemetry

__all__ = ["CoordinatorListener", "RunSnapshot", "TaskSnapshot", "notify"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run as it was right after a change (a frozen copy: the engine's view keeps changing)."""

    id: str
    workflow: str
    state: RunState
    cause: str
    submitted_at: float
    finished_at: float | None
    tasks: int  # how many
    counts: Mapping[str, int]  # task state value -> how many (non-zero only)
    energy_joules: float  # of every task's last report (0 while the run is running)

    @classmethod
    def of(cls, view: RunView) -> RunSnapshot:
        ended = view.state is not RunState.RUNNING
        energy = sum(t.result.energy_joules for t in view.tasks.values() if t.result is not None) if ended else 0.0
        return cls(
            id=view.id,
            workflow=view.workflow.name,
            state=view.state,
            cause=view.cause,
            submitted_at=view.submitted_at,
            finished_at=view.finished_at,
            tasks=len(view.tasks),
            counts={state.value: n for state, n in view.counts.items() if n},
            energy_joules=energy,
        )


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """A task as it was right after a change (a frozen copy)."""

    run: str
    workflow: str
    task: str
    runtime: str
    state: TaskState
    attempt: int
    agent: str | None
    result: TaskResult | None  # the agent's last report, if it said more than an exit code

    @classmethod
    def of(cls, view: TaskView) -> TaskSnapshot:
        return cls(
            run=view.run.id,
            workflow=view.run.workflow.name,
            task=view.name,
            runtime=view.spec.runtime,
            state=view.state,
            attempt=view.attempt,
            agent=view.agent,
            result=view.result,
        )


class CoordinatorListener:
    """Base class with no-op hooks; override the ones you need and pass the
    listener to ``Coordinator.add_listener``.

    ``frozen_tasks``: a listener that reads what ``task_changed`` gives it only inside the hook,
    synchronously, may set it False and is then given the engine's live task view (read-only by
    contract) instead of a ``TaskSnapshot`` copy — when no listener asks for one, none is made.
    """

    frozen_tasks: ClassVar[bool] = True

    def run_changed(self, transition: RunTransition, run: RunSnapshot) -> None:
        """The run started (``RUNNING``) or ended; ``run`` is its state after the change."""

    def task_changed(self, transition: TaskTransition, task: TaskSnapshot) -> None:
        """A task changed state (derived ``pending → ready`` changes are not reported);
        for a terminal state ``task.result`` holds the agent's report, if any."""

    def agent_telemetry(self, sample: Telemetry) -> None:
        """An agent's telemetry sample (already checked; see ``dagon.core._agent_telemetry``)."""

    def agent_changed(self, change: AgentChanged) -> None:
        """An agent came online or went offline (``change.reason`` says why)."""


def notify(listeners: list[CoordinatorListener], hook: str, *args: object) -> None:
    """Call ``hook`` on every listener; a failing listener is logged, never propagated."""
    for listener in listeners:
        try:
            getattr(listener, hook)(*args)
        except Exception:
            log.exception("coordinator listener %r failed in %s", listener, hook)
