"""Lost agents and the tasks that run again because of them, said in the log (issue 13, point 7).

Reads the engine's commands of one drive pass: an agent going offline is a WARNING naming it and
why; every attempt moved back to ready from an agent (lost, restarted, cancelled by it, an
assignment that never arrived) is collected and said once per agent and pass, with the tasks,
their attempt numbers and the cause. Refusals (an agent declining an assignment) are routine and
left to the INFO log.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from dagon.core._events import AgentChanged, Command, TaskTransition
from dagon.core._states import TaskState

__all__ = ["say_losses"]

log = logging.getLogger("dagon.core._coordinator")

_AWAY = (TaskState.DISPATCHED, TaskState.RUNNING)
_SHOWN = 10  # tasks named per line


def say_losses(commands: Iterable[Command]) -> None:
    """Log lost agents and the attempts they make run again (one line per agent)."""
    moved: defaultdict[str, list[str]] = defaultdict(list)
    causes: defaultdict[str, set[str]] = defaultdict(set)
    for cmd in commands:
        if isinstance(cmd, AgentChanged):
            if not cmd.online and cmd.reason != "shutdown":
                log.warning("agent %s lost (%s)", cmd.agent, cmd.reason)
        elif isinstance(cmd, TaskTransition) and cmd.new is TaskState.READY and cmd.old in _AWAY and cmd.agent:
            if cmd.cause.startswith(f"agent {cmd.agent} refused"):
                continue
            moved[cmd.agent].append(f"{cmd.run}/{cmd.task} (attempt {cmd.attempt})")
            causes[cmd.agent].add(cmd.cause)
    for agent, tasks in moved.items():
        shown = ", ".join(tasks[:_SHOWN]) + (f" and {len(tasks) - _SHOWN} more" if len(tasks) > _SHOWN else "")
        log.warning(
            "agent %s: %d task(s) requeued, they run again from their start: %s — %s",
            agent, len(tasks), shown, "; ".join(sorted(causes[agent])),
        )  # fmt: skip
