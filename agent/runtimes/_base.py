"""The runtime contract: what a runtime is given for one attempt and what it returns."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from dagon.protocol import ResultStatus, TaskAssignment

__all__ = ["Execution", "Outcome", "Runtime"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one execution ended, as seen by the runtime."""

    status: ResultStatus
    exit_code: int | None
    cpu_time: float = 0.0
    max_rss: int = 0
    error: str = ""
    stderr_tail: str = ""
    value: Any = None


@dataclass(frozen=True, slots=True)
class Execution:
    """One attempt, ready to run: inputs are staged and references rewritten.

    Attributes:
        assignment: the task as the coordinator sent it (``runtime_options``, ``cpus``,
            ``memory``, ``timeout`` …).
        command: the command with every ``workflow://`` reference rewritten to the
            absolute path of the staged input (inside ``workdir``).
        workdir: the task's scratch directory; the task must run in it (a container
            runtime mounts it as the working directory) and leave its outputs there.
        env: the task's own environment plus ``DAGON_RUN``, ``DAGON_TASK``,
            ``DAGON_ATTEMPT`` and ``DAGON_WORKDIR`` (not the agent's environment).
        stdout, stderr: files under ``workdir/.dagon`` that must receive the task's output.
    """

    assignment: TaskAssignment
    command: str
    workdir: Path
    env: Mapping[str, str]
    stdout: Path
    stderr: Path


class Runtime(abc.ABC):
    """A way to run a task's command besides the built-in process and python runtimes.

    An agent announces the ``name`` of every runtime it was given and hands each
    assignment naming it to :meth:`run`. Implementations must end every attempt in
    one :class:`Outcome` (a non-zero exit is ``FAILED`` with its exit code, never a
    success), enforce ``assignment.timeout`` (``TIMEOUT``), and on cancellation stop
    and clean up what they started (process, container, pod, job) before re-raising.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    async def run(self, execution: Execution) -> Outcome:
        """Run one attempt to its end."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most runtimes hold nothing
        """Release what the runtime holds (clients, pools); called when the agent stops."""
