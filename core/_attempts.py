"""Retried attempts and why they did not count (issue 13, point 7).

A task's history of attempts is kept only for tasks that ran (or were placed) more than once:
in a 10,000-task run most tasks have none, and those cost nothing. Each task keeps at most
:data:`KEPT_PER_TASK` past attempts (the latest): an assignment refused again and again must not
grow without bound. The run keeps its retried tasks in the order they were last retried, so the
public run status can show the latest :data:`SHOWN_IN_STATUS` of them and count the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["KEPT_PER_TASK", "SHOWN_IN_STATUS", "PastAttempt", "past_attempts", "record_retry"]

KEPT_PER_TASK: Final = 20  # past attempts remembered per task (the latest)
SHOWN_IN_STATUS: Final = 100  # retried tasks listed in a run status document (the latest retried)

_ACTIVE_VALUES = frozenset({"dispatched", "running"})
_AGAIN_VALUES = frozenset({"ready", "retry_wait", "pending"})


@dataclass(frozen=True, slots=True)
class PastAttempt:
    """An attempt that did not end its task: the task ran (or was placed) again, and why."""

    attempt: int
    agent: str | None
    cause: str

    @classmethod
    def of(cls, old: str | None, new: str, attempt: int, agent: str | None, cause: str) -> PastAttempt | None:
        """The retry a transition stands for (an active attempt sent back to ready or to a retry
        wait: its agent was lost, refused or cancelled it, it failed with retries left), else None."""
        if old in _ACTIVE_VALUES and new in _AGAIN_VALUES:
            return cls(attempt, agent, cause)
        return None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> PastAttempt:
        agent = doc.get("agent")
        return cls(int(doc.get("attempt") or 0), str(agent) if agent is not None else None, str(doc.get("cause", "")))

    def to_doc(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "agent": self.agent, "cause": self.cause}

    def __str__(self) -> str:
        where = f" on {self.agent}" if self.agent else ""
        return f"attempt {self.attempt}{where}: {self.cause}"


def record_retry(retries: dict[str, list[PastAttempt]], task: str, past: PastAttempt) -> None:
    """Add ``past`` to ``task``'s history in ``retries`` (the task becomes the latest retried)."""
    seen = retries.pop(task, None) or []
    seen.append(past)
    retries[task] = seen[-KEPT_PER_TASK:]


def past_attempts(
    transitions: Iterable[tuple[str, str, str, str, int, str | None, str, float]],
) -> dict[str, list[PastAttempt]]:
    """Each task's retried attempts, from stored transitions (``RunStore.transitions``: run, task,
    old, new, attempt, agent, cause, at) — what ``dagon status`` shows for a run of the store."""
    found: dict[str, list[PastAttempt]] = {}
    for _run, task, old, new, attempt, agent, cause, _at in transitions:
        past = PastAttempt.of(old, new, attempt, agent, cause)
        if past is not None:
            record_retry(found, task, past)
    return found
