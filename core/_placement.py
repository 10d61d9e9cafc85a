"""Placement: which agent runs a ready task.

A :class:`Placement` policy is a small pluggable interface. The default,
:class:`LeastLoaded`, picks among the agents that satisfy the task's
constraints the one with the largest share of free slots.

Until peer-to-peer staging exists, a task with ``workflow://`` inputs can only
run on an agent on the same host as its producers (inputs are linked or copied
locally), so that is a hard constraint here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from dagon.core._model import Task
from dagon.protocol import AgentId, Capabilities, TaskRef

if TYPE_CHECKING:
    from dagon.core._views import TaskView

__all__ = ["AgentView", "LeastLoaded", "Locality", "Placement", "unmet_constraint"]


class AgentView:
    """The engine's picture of one agent."""

    __slots__ = ("blocked_until", "capabilities", "id", "inflight", "last_seen", "online")

    def __init__(self, agent: AgentId, capabilities: Capabilities) -> None:
        self.id = agent
        self.capabilities = capabilities
        self.online = False
        self.last_seen = 0.0
        self.blocked_until = 0.0
        self.inflight: dict[TaskRef, TaskView] = {}  # attempts sent and not yet reported

    @property
    def capacity(self) -> int:
        return self.capabilities.slots + self.capabilities.prefetch

    @property
    def free(self) -> int:
        return self.capacity - len(self.inflight)


def unmet_constraint(task: Task, caps: Capabilities, agent: AgentId) -> str | None:
    """Why ``task`` can never run on this agent, or None if it can."""
    if task.agent is not None and task.agent != agent:
        return f"pinned to agent {task.agent!r}"
    if task.host and task.host not in caps.addresses and task.host != caps.hostname:
        return f"not at {task.host} (agent is {caps.hostname}: {', '.join(caps.addresses) or 'no address announced'})"
    if task.runtime not in caps.runtimes:
        return f"runtime {task.runtime!r} not available (agent has {', '.join(caps.runtimes)})"
    for key, value in task.labels.items():
        if caps.labels.get(key) != value:
            return f"label {key}={value} missing"
    if task.device and task.device not in caps.devices:
        return f"device {task.device} not on it (it has {', '.join(caps.devices) or 'none'})"
    if task.cpus > caps.cpus:
        return f"needs {task.cpus:g} cpus, agent has {caps.cpus}"
    if task.memory and task.memory > caps.memory:
        return f"needs {task.memory} bytes of memory, agent has {caps.memory}"
    return None


@dataclass(frozen=True, slots=True)
class Locality:
    """Bytes of a task's ``workflow://`` inputs already on each agent and each host."""

    by_agent: Mapping[str, int] = field(default_factory=dict)
    by_host: Mapping[str, int] = field(default_factory=dict)


class Placement(Protocol):
    def choose(
        self,
        task: Task,
        agents: Sequence[AgentView],
        *,
        input_hosts: frozenset[str],
        locality: Locality | None = None,
    ) -> AgentView | None:
        """Pick one of ``agents`` (online, with a free slot and room for the task's cpus/memory) or None."""
        ...


class LeastLoaded:
    """Eligible agent on the host of most of the task's inputs (data locality: staging is
    a link there, a network pull elsewhere), then with the highest fraction of free slots."""

    def choose(
        self,
        task: Task,
        agents: Sequence[AgentView],
        *,
        input_hosts: frozenset[str],
        locality: Locality | None = None,
    ) -> AgentView | None:
        best: AgentView | None = None
        best_score = (False, -1.0)
        for agent in agents:
            caps = agent.capabilities
            if unmet_constraint(task, caps, agent.id) is not None:
                continue
            score = (caps.host_id in input_hosts, agent.free / agent.capacity)
            if score > best_score:
                best, best_score = agent, score
        return best
