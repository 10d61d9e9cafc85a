"""The workflow model, the sans-IO engine and the async coordinator."""

from dagon.core._coordinator import Coordinator, new_run_id
from dagon.core._engine import Engine, RunView, TaskView
from dagon.core._errors import IllegalTransition, RunNotFound, TaskFailed, ValidationError
from dagon.core._events import (
    AgentAnnounced,
    AgentChanged,
    AgentOffline,
    AgentSeen,
    CancelAttempt,
    Command,
    DeleteScratch,
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
from dagon.core._fit import Scored, check_placeable
from dagon.core._listeners import CoordinatorListener
from dagon.core._model import Graph, Retry, Task, Workflow
from dagon.core._mongo import MongoSink, MongoSinkStats
from dagon.core._placement import AgentView, LeastLoaded, Locality, Placement, unmet_constraint
from dagon.core._refs import Reference, find_references
from dagon.core._results import RunEvent, RunResult, TaskOutcome
from dagon.core._states import LEGAL, RUN_TERMINAL, TERMINAL, RunState, TaskState
from dagon.core._store import RunStore, Store
from dagon.core._telemetry import AgentTelemetry
from dagon.core._trust import CoordinatorTrust

__all__ = [
    "LEGAL",
    "RUN_TERMINAL",
    "TERMINAL",
    "AgentAnnounced",
    "AgentChanged",
    "AgentOffline",
    "AgentSeen",
    "AgentView",
    "CancelAttempt",
    "Command",
    "Coordinator",
    "CoordinatorTrust",
    "Dispatch",
    "Engine",
    "Event",
    "Graph",
    "IllegalTransition",
    "LeastLoaded",
    "Placement",
    "Reference",
    "Retry",
    "RunCancelRequested",
    "RunEvent",
    "RunResult",
    "RunStore",
    "Store",
    "RunNotFound",
    "RunState",
    "RunSubmitted",
    "RunTransition",
    "RunView",
    "Task",
    "TaskFailed",
    "TaskFinished",
    "TaskOutcome",
    "TaskRejected",
    "TaskStarted",
    "TaskState",
    "TaskTransition",
    "TaskView",
    "Tick",
    "ValidationError",
    "Workflow",
    "find_references",
    "new_run_id",
    "unmet_constraint",
    "DeleteScratch",
    "TaskWaiting",
    "Scored",
    "Locality",
    "check_placeable",
    "AgentTelemetry",
    "CoordinatorListener",
    "MongoSink",
    "MongoSinkStats",
]
