"""The runtime contract: what a runtime is given for one attempt and what it returns."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
        resolve: substitutes ``secret://NAME`` placeholders in a runtime option (an HTTP
            header, a cloud credential) with the agent's secret; the agent then redacts
            that value from the error and stderr tail it reports. Raises ``ValueError``
            naming the secret when it is not defined on this agent.
    """

    assignment: TaskAssignment
    command: str
    workdir: Path
    env: Mapping[str, str]
    stdout: Path
    stderr: Path
    resolve: Callable[[str], str] = field(default=lambda text: _no_secrets(text))


def _no_secrets(text: str) -> str:
    if "secret://" in text:
        raise ValueError(f"{text!r} names a secret, and this runtime was given no secrets to resolve it with")
    return text


class Runtime(abc.ABC):
    """A way to run a task's command besides the built-in process and python runtimes.

    An agent announces the ``name`` of every runtime it was given and hands each
    assignment naming it to :meth:`run`. Implementations must end every attempt in
    one :class:`Outcome` (a non-zero exit is ``FAILED`` with its exit code, never a
    success), enforce ``assignment.timeout`` (``TIMEOUT``), and on cancellation stop
    and clean up what they started (process, container, pod, job) before re-raising.
    """

    name: ClassVar[str]
    # True: the work an attempt starts outlives the agent process (a batch job), and a
    # restarted agent follows it again through resumable() and resume().
    detached: ClassVar[bool] = False

    @abc.abstractmethod
    async def run(self, execution: Execution) -> Outcome:
        """Run one attempt to its end."""

    def resumable(self, execution: Execution) -> bool:
        """Whether an earlier agent process started this attempt's work (only ``detached`` runtimes)."""
        return False

    async def resume(self, execution: Execution) -> Outcome:
        """Follow the work an earlier agent process started for this attempt to its end."""
        raise NotImplementedError(f"the {self.name} runtime cannot resume an attempt")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most runtimes hold nothing
        """Release what the runtime holds (clients, pools); called when the agent stops."""
