"""Errors raised by the workflow model, the engine and the coordinator."""

from __future__ import annotations

from collections.abc import Sequence

from dagon.protocol import DagonError

__all__ = ["IllegalTransition", "RunNotFound", "TaskFailed", "ValidationError"]


class ValidationError(DagonError, ValueError):
    """A workflow is invalid; nothing has run.

    Attributes:
        tasks: the names of the offending tasks, in a meaningful order (for a
            cycle: the cycle's tasks in order).
    """

    def __init__(self, message: str, *, tasks: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.tasks = tuple(tasks)


class IllegalTransition(DagonError, RuntimeError):
    """The engine was asked to move a task along an edge the lifecycle forbids."""

    def __init__(self, task: str, old: str, new: str) -> None:
        super().__init__(f"task {task!r}: illegal transition {old} -> {new}")
        self.task = task
        self.old = old
        self.new = new


class RunNotFound(DagonError, LookupError):
    def __init__(self, run: str) -> None:
        super().__init__(f"no run {run!r} is known to this coordinator")
        self.run = run


class TaskFailed(DagonError):
    """Raised by ``RunResult.raise_for_status`` when tasks did not succeed.

    Attributes:
        failed: ``{task name: one-line reason}`` for every task that failed.
    """

    def __init__(self, workflow: str, failed: dict[str, str]) -> None:
        lines = "; ".join(f"{name}: {why}" for name, why in failed.items())
        super().__init__(f"workflow {workflow!r}: {len(failed)} task(s) failed — {lines}")
        self.workflow = workflow
        self.failed = failed
