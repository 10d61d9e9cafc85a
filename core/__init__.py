"""The workflow model, the sans-IO engine and the async coordinator."""

from dagon.core._agent_telemetry import AgentTelemetry
from dagon.core._config import CoordinatorConfig, load_coordinator_config
from dagon.core._coordinator import Coordinator, new_run_id
from dagon.core._engine import Engine
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
from dagon.core._listeners import CoordinatorListener, RunSnapshot, TaskSnapshot
from dagon.core._model import Graph, Retry, Task, Workflow
from dagon.core._mongo import MongoSink, MongoSinkStats
from dagon.core._placement import AgentView, LeastLoaded, Locality, Placement, unmet_constraint
from dagon.core._refs import Reference, find_references
from dagon.core._results import RunEvent, RunResult, TaskOutcome
from dagon.core._states import LEGAL, RUN_TERMINAL, TERMINAL, RunState, TaskState
from dagon.core._store import RunStore, Store
from dagon.core._trust import CoordinatorTrust
from dagon.core._views import RunView, TaskView

__all__ = [
    "LEGAL",
    "RUN_TERMINAL",
    "TERMINAL",
    "AgentAnnounced",
    "AgentChanged",
    "AgentOffline",
    "AgentSeen",
    "AgentTelemetry",
    "AgentView",
    "CancelAttempt",
    "Command",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorListener",
    "CoordinatorTrust",
    "DeleteScratch",
    "Dispatch",
    "Engine",
    "Event",
    "Graph",
    "IllegalTransition",
    "LeastLoaded",
    "Locality",
    "MongoSink",
    "MongoSinkStats",
    "Placement",
    "Reference",
    "Retry",
    "RunCancelRequested",
    "RunEvent",
    "RunNotFound",
    "RunResult",
    "RunSnapshot",
    "RunState",
    "RunStore",
    "RunSubmitted",
    "RunTransition",
    "RunView",
    "Scored",
    "Store",
    "Task",
    "TaskFailed",
    "TaskFinished",
    "TaskOutcome",
    "TaskRejected",
    "TaskSnapshot",
    "TaskStarted",
    "TaskState",
    "TaskTransition",
    "TaskView",
    "TaskWaiting",
    "Tick",
    "ValidationError",
    "Workflow",
    "check_placeable",
    "find_references",
    "load_coordinator_config",
    "new_run_id",
    "unmet_constraint",
]
