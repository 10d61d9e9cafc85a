"""Placement constraints, resource slots, data-locality scoring and waiting reasons.

Sans-IO helpers of the engine and the coordinator:

* **constraints** of a task against one agent — pin, runtime, labels, arch,
  minimum cpus/memory (:func:`unmet`), plus "same agent as task X"
  (``Task.colocate``), which the engine resolves to the agent X ran on;
* **resource slots**: every attempt an agent holds (dispatched or running)
  holds its task's ``cpus`` and ``memory`` against the agent's announced
  capacity, alongside the plain slot count (:func:`fits_now`). The cpu budget is
  the larger of the agent's cpus and its slots (an agent configured with more
  slots than cores oversubscribes on purpose), plus its prefetch places;
* **scoring** (:class:`Scored`, the engine's default policy): among the agents
  that fit, the one holding most bytes of the task's inputs on its host
  (staging there is a link, elsewhere a network pull), then on itself, then the
  least loaded;
* **submission check** (:func:`check_placeable`): a task that no *known* agent
  could ever run is an error naming the task and each agent's unmet
  constraint. Callers run it only once at least one agent is known — the
  embedded default starts its agent right after its coordinator, and a real
  deployment may submit before its agents connect; such runs wait instead;
* **waiting reasons** (:func:`waiting_reason`): why a ready task is not placed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from dagon.core._errors import ValidationError
from dagon.core._model import Task, Workflow
from dagon.core._placement import AgentView, Locality, unmet_constraint
from dagon.protocol import AgentId

if TYPE_CHECKING:
    from dagon.core._views import TaskView

__all__ = ["Locality", "Scored", "check_placeable", "fits_now", "held", "locality_of", "unmet", "waiting_reason"]


def unmet(task: Task, agent: AgentView, colocated: AgentId | None = None) -> str | None:
    """Why ``task`` can never run on ``agent`` (static constraints), or None if it can."""
    if colocated is not None and agent.id != colocated:
        return f"must run with task {task.colocate!r} on agent {colocated!r}"
    caps = agent.capabilities
    if task.arch and caps.arch != task.arch:
        return f"needs arch {task.arch}, agent is {caps.arch}"
    return unmet_constraint(task, caps, agent.id)


def cpu_budget(agent: AgentView) -> float:
    caps = agent.capabilities
    return float(max(caps.cpus, caps.slots) + caps.prefetch)


def held(agent: AgentView) -> tuple[float, int]:
    """(cpus, memory bytes) held by the attempts the agent holds (inflight is bounded by its capacity)."""
    cpus = 0.0
    memory = 0
    for view in agent.inflight.values():
        cpus += view.spec.cpus
        memory += view.spec.memory
    return cpus, memory


def fits_now(task: Task, agent: AgentView) -> bool:
    """Whether the agent has a free slot and enough free cpus and memory for ``task`` now."""
    if agent.free <= 0:
        return False
    cpus, memory = held(agent)
    if agent.inflight and cpus + task.cpus > cpu_budget(agent) + 1e-9:
        return False  # an idle agent takes any task its static constraints allow
    return not (task.memory and agent.inflight and memory + task.memory > agent.capabilities.memory)


_EMPTY_LOCALITY = Locality()


def _covers(pattern: str, path: str) -> bool:
    pattern = pattern.strip("/")
    if pattern in ("", "."):
        return True
    return path == pattern or path.startswith(pattern + "/") or fnmatch.fnmatchcase(path, pattern)


def locality_of(view: TaskView, producers: Iterable[tuple[TaskView, str]]) -> Locality:
    """Sum, per agent and per host, the manifest sizes of the producers' files the task reads.

    Args:
        view: the consumer.
        producers: (producer view, referenced path) pairs.
    """
    by_agent: dict[str, int] = {}
    by_host: dict[str, int] = {}
    for producer, path in producers:
        result = producer.result
        if result is None or producer.agent is None:
            continue
        size = sum(f.size for f in result.outputs if _covers(path, f.path))
        if size:
            by_agent[producer.agent] = by_agent.get(producer.agent, 0) + size
            by_host[producer.host] = by_host.get(producer.host, 0) + size
    if not by_agent:
        return _EMPTY_LOCALITY
    return Locality(by_agent, by_host)


class Scored:
    """Data locality first (bytes on the agent's host, then on the agent), then load.

    ``agents`` are those the engine found online, unblocked, fitting the task's
    resources now; this policy still applies the static constraints, so it is
    safe to hand it any list.
    """

    def choose(
        self,
        task: Task,
        agents: Sequence[AgentView],
        *,
        input_hosts: frozenset[str],
        locality: Locality | None = None,
    ) -> AgentView | None:
        loc = locality or _EMPTY_LOCALITY
        best: AgentView | None = None
        best_score: tuple[int, int, bool, float] = (-1, -1, False, -1.0)
        for agent in agents:
            if unmet(task, agent) is not None:
                continue
            host = agent.capabilities.host_id
            score = (
                loc.by_host.get(host, 0),
                loc.by_agent.get(agent.id, 0),
                host in input_hosts,
                agent.free / agent.capacity,
            )
            if score > best_score:
                best, best_score = agent, score
        return best


def _summary(reasons: Mapping[str, str]) -> str:
    shown = [f"agent {a}: {r}" for a, r in list(reasons.items())[:4]]
    more = len(reasons) - len(shown)
    return "; ".join(shown) + (f"; and {more} more agent(s)" if more > 0 else "")


def check_placeable(workflow: Workflow, agents: Iterable[AgentView]) -> None:
    """Raise ValidationError for every task no known agent (online or not) could ever run.

    Static constraints only (pin, runtime, labels, arch, cpus, memory); a task
    colocated with another must share an eligible agent with it.
    """
    known = list(agents)
    if not known:
        return
    eligible: dict[str, set[AgentId]] = {}
    problems: list[str] = []
    bad: list[str] = []
    try:
        order = workflow.graph(external=True).order
    except ValidationError:
        order = tuple(t.name for t in workflow)
    for name in order:
        task = workflow[name]
        reasons: dict[str, str] = {}
        fit: set[AgentId] = set()
        for agent in known:
            why = unmet(task, agent)
            if why is None:
                fit.add(agent.id)
            else:
                reasons[agent.id] = why
        if task.colocate and task.colocate in eligible:
            shared = fit & eligible[task.colocate]
            for agent_id in fit - shared:
                reasons[agent_id] = f"task {task.colocate!r} (colocated) cannot run there"
            fit = shared
        eligible[name] = fit
        if not fit:
            bad.append(name)
            problems.append(f"task {name!r}: {_summary(reasons)}")
    if problems:
        shown = problems[:5] + ([f"… and {len(problems) - 5} more task(s)"] if len(problems) > 5 else [])
        raise ValidationError(
            f"workflow {workflow.name!r} cannot run: no known agent satisfies the constraints of "
            + "; ".join(shown)
            + ". Change the tasks' constraints (labels, agent, arch, runtime, cpus, memory, colocate)"
            " or start an agent that meets them.",
            tasks=bad,
        )


def waiting_reason(task: Task, agents: Iterable[AgentView], now: float, colocated: AgentId | None) -> str:
    """Why a ready task is not placed right now (for its cause and a waiting event)."""
    known = list(agents)
    if not known:
        return "waiting: no agent known yet"
    eligible = [a for a in known if unmet(task, a, colocated) is None]
    if not eligible:
        reasons: dict[str, str] = {a.id: unmet(task, a, colocated) or "" for a in known}
        return f"waiting: no known agent satisfies it ({_summary(reasons)})"
    online = [a for a in eligible if a.online]
    if not online:
        return f"waiting: no eligible agent online ({len(eligible)} known, offline)"
    # Counts only (not which resource is short): they change with agents, not with load,
    # so the reason — and its event — stays put while the task waits.
    return f"waiting: {len(online)} eligible agent(s) busy"
