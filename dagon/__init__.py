"""dagon — an asyncio-native workflow engine for the compute continuum.

>>> import dagon
>>> wf = dagon.Workflow("hello")
>>> _ = wf.shell("greet", "echo hello > greeting.txt")
>>> _ = wf.shell("shout", "tr a-z A-Z < workflow:///greet/greeting.txt")
>>> # wf.run()  # blocking; or: async with dagon.connect() as c: await (await c.submit(wf)).wait()
"""

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use: ``dagon-agent`` imports ``dagon.*`` modules too, and must not pay for the
# coordinator, the client and the DAGonStar layer it never uses (an idle agent's memory is a target).
_EXPORTS = {
    "Client": "dagon._client",
    "RunHandle": "dagon._client",
    "connect": "dagon._client",
    "DataMover": "dagon._dagonstar._types",
    "StagerMover": "dagon._dagonstar._types",
    "Status": "dagon._dagonstar._types",
    "MetaWorkflow": "dagon._meta",
    "Workflow": "dagon._dagonstar",
    "Retry": "dagon.core",
    "RunEvent": "dagon.core",
    "RunResult": "dagon.core",
    "RunState": "dagon.core",
    "Task": "dagon.core",
    "TaskFailed": "dagon.core",
    "TaskOutcome": "dagon.core",
    "TaskState": "dagon.core",
    "ValidationError": "dagon.core",
    "ConfigError": "dagon.protocol",
    "DagonError": "dagon.protocol",
    "ProtocolError": "dagon.protocol",
    "TransportError": "dagon.protocol",
    "__version__": "dagon.protocol._version",
}

if TYPE_CHECKING:
    from dagon._client import Client, RunHandle, connect
    from dagon._dagonstar import Workflow
    from dagon._dagonstar._types import DataMover, StagerMover, Status
    from dagon._meta import MetaWorkflow
    from dagon.core import (
        Retry,
        RunEvent,
        RunResult,
        RunState,
        Task,
        TaskFailed,
        TaskOutcome,
        TaskState,
        ValidationError,
    )
    from dagon.protocol import ConfigError, DagonError, ProtocolError, TransportError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dagon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Client",
    "ConfigError",
    "DagonError",
    "DataMover",
    "MetaWorkflow",
    "ProtocolError",
    "Retry",
    "RunEvent",
    "RunHandle",
    "RunResult",
    "RunState",
    "StagerMover",
    "Status",
    "Task",
    "TaskFailed",
    "TaskOutcome",
    "TaskState",
    "TransportError",
    "ValidationError",
    "Workflow",
    "__version__",
    "connect",
]
