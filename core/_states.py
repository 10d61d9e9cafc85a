"""Task and run lifecycle: one enum each, legal transitions listed once."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["LEGAL", "RUN_TERMINAL", "TERMINAL", "RunState", "TaskState"]


class TaskState(enum.StrEnum):
    PENDING = "pending"  # waiting for dependencies
    READY = "ready"  # dependencies done; waiting for an agent slot
    DISPATCHED = "dispatched"  # sent to an agent
    RUNNING = "running"  # the agent reported it started
    RETRY_WAIT = "retry_wait"  # an attempt failed; next attempt after backoff
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UPSTREAM_FAILED = "upstream_failed"  # a dependency failed or was cancelled


class RunState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: Final = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.UPSTREAM_FAILED})
RUN_TERMINAL: Final = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})

_S = TaskState
LEGAL: Final[dict[TaskState, frozenset[TaskState]]] = {
    _S.PENDING: frozenset({_S.READY, _S.UPSTREAM_FAILED, _S.CANCELLED}),
    # READY -> PENDING: a dependency is being regenerated (its outputs were lost).
    _S.READY: frozenset({_S.DISPATCHED, _S.FAILED, _S.CANCELLED, _S.PENDING}),
    # DISPATCHED -> SUCCEEDED/FAILED: a short task's "started" report may travel
    # in the same batch as its result. -> READY: refused by or lost with its agent.
    # -> PENDING: its inputs were lost; it waits for their producers to run again.
    _S.DISPATCHED: frozenset({_S.RUNNING, _S.SUCCEEDED, _S.FAILED, _S.RETRY_WAIT, _S.READY, _S.CANCELLED, _S.PENDING}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.RETRY_WAIT, _S.READY, _S.CANCELLED, _S.PENDING}),
    _S.RETRY_WAIT: frozenset({_S.READY, _S.CANCELLED}),
    # SUCCEEDED -> READY: its outputs were lost (with their agent, or failed their sha256
    # check) while a consumer still needs them: it runs again (see dagon.core._recovery).
    _S.SUCCEEDED: frozenset({_S.READY}),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.UPSTREAM_FAILED: frozenset(),
}
