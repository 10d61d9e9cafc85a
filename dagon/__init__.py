"""dagon — an asyncio-native workflow engine for the compute continuum.

>>> import dagon
>>> wf = dagon.Workflow("hello")
>>> _ = wf.shell("greet", "echo hello > greeting.txt")
>>> _ = wf.shell("shout", "tr a-z A-Z < workflow:///greet/greeting.txt")
>>> # wf.run()  # blocking; or: async with dagon.connect() as c: await (await c.submit(wf)).wait()
"""

__version__ = "0.1.0"

from dagon._client import Client, RunHandle, connect
from dagon._compat_types import DataMover, StagerMover, Status
from dagon._meta import MetaWorkflow
from dagon._workflow import Workflow
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
