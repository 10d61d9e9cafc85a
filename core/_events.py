"""Events fed into the engine and commands it returns (sans-IO contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dagon.core._model import Graph, Workflow
from dagon.core._states import RunState, TaskState
from dagon.protocol import AgentId, Capabilities, Rejection, RunId, TaskAssignment, TaskRef, TaskResult

if TYPE_CHECKING:
    from dagon.core._views import RunView, TaskView

__all__ = [
    "AgentAnnounced",
    "AgentChanged",
    "AgentOffline",
    "AgentSeen",
    "CancelAttempt",
    "Command",
    "DeleteScratch",
    "Dispatch",
    "Event",
    "RunCancelRequested",
    "RunSubmitted",
    "RunTransition",
    "TaskFinished",
    "TaskRejected",
    "TaskStarted",
    "TaskTransition",
    "TaskWaiting",
    "Tick",
]


# -- events (inputs) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSubmitted:
    run: RunId
    workflow: Workflow
    graph: Graph
    keep_scratch: bool = False  # garbage-collect nothing of this run


@dataclass(frozen=True, slots=True)
class RunCancelRequested:
    run: RunId
    reason: str = "cancelled by user"


@dataclass(frozen=True, slots=True)
class AgentAnnounced:
    agent: AgentId
    capabilities: Capabilities


@dataclass(frozen=True, slots=True)
class AgentOffline:
    agent: AgentId
    reason: str


@dataclass(frozen=True, slots=True)
class AgentSeen:
    """Any sign of life (heartbeat, report) from an agent.

    ``held`` (from heartbeats): how many assignments the agent holds, running or
    queued; None when unknown.
    """

    agent: AgentId
    held: int | None = None
    # every attempt the agent holds, when its heartbeat lists them all (see Heartbeat.complete)
    refs: frozenset[TaskRef] | None = None


@dataclass(frozen=True, slots=True)
class TaskStarted:
    agent: AgentId
    ref: TaskRef
    started_at: float
    workdir: str


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """Engine event: one attempt ended, as ``agent`` reported it.

    The words for a task's end, from the agent to the user:
    ``agent.runtimes.Outcome`` (what a runtime returns) → ``protocol.TaskResult`` (one
    attempt's report on the wire) → ``protocol.TasksFinished`` (the wire message carrying
    a batch of them) → ``TaskFinished`` (this: one of them fed to the engine) →
    ``core.TaskOutcome`` (what ``RunResult`` tells the user about a task).
    """

    agent: AgentId
    result: TaskResult


@dataclass(frozen=True, slots=True)
class TaskRejected:
    agent: AgentId
    rejection: Rejection


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: fire due retry timers and detect silent agents."""


Event = (
    RunSubmitted
    | RunCancelRequested
    | AgentAnnounced
    | AgentOffline
    | AgentSeen
    | TaskStarted
    | TaskFinished
    | TaskRejected
    | Tick
)


# -- commands (outputs) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dispatch:
    agent: AgentId
    assignment: TaskAssignment


@dataclass(frozen=True, slots=True)
class CancelAttempt:
    agent: AgentId
    ref: TaskRef
    reason: str


@dataclass(frozen=True, slots=True)
class TaskTransition:
    """A task changed state; ``cause`` says why (shown to users and stored).

    ``view`` is the engine's task (for the coordinator's own use: results, checkpoints;
    it keeps changing — listeners get a frozen ``TaskSnapshot`` instead).
    """

    run: RunId
    task: str
    old: TaskState
    new: TaskState
    attempt: int
    agent: AgentId | None
    cause: str
    at: float
    view: TaskView | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RunTransition:
    """A run started (``RUNNING``), was resumed, or ended; ``view`` as in :class:`TaskTransition`."""

    run: RunId
    new: RunState
    cause: str
    at: float
    view: RunView | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AgentChanged:
    agent: AgentId
    online: bool
    reason: str


@dataclass(frozen=True, slots=True)
class DeleteScratch:
    """``agent`` deletes the scratch directory of this attempt (its last consumer succeeded)."""

    agent: AgentId
    ref: TaskRef


@dataclass(frozen=True, slots=True)
class TaskWaiting:
    """A ready task is not placed, and why (emitted only when the reason changes)."""

    run: RunId
    task: str
    attempt: int
    reason: str
    at: float


Command = Dispatch | CancelAttempt | TaskTransition | RunTransition | AgentChanged | DeleteScratch | TaskWaiting
