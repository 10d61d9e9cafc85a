"""Checks a coordinator makes at submission, against the agents it knows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from dagon.core._errors import ValidationError
from dagon.core._fit import check_placeable
from dagon.core._model import Graph, Workflow
from dagon.core._placement import AgentView

if TYPE_CHECKING:
    from dagon.core._engine import Engine

__all__ = ["admit", "check_runtimes", "missing_runtimes"]


def admit(workflow: Workflow, engine: Engine) -> Graph:
    """Every check a run passes before it is accepted (submitted locally or by a client);
    returns its graph, raises ValidationError saying what to change.

    The graph includes references to other workflows, which must name a known run. A
    task whose runtime no online agent offers is an error once any agent is online; one
    no known agent could ever hold (cpus, memory, labels) is an error as soon as agents
    are known (see ``check_placeable``).
    """
    graph = workflow.graph(external=True)
    agents = engine.agents.values()
    if any(a.online for a in agents):
        check_runtimes(workflow, agents)
    check_placeable(workflow, agents)  # no-op while no agent is known
    engine.check_references(workflow, graph)
    return graph


def missing_runtimes(workflow: Workflow, agents: Iterable[AgentView]) -> dict[str, list[str]]:
    """``{runtime: [task, …]}`` for every runtime no online agent announces."""
    offered: set[str] = set()
    for agent in agents:
        if agent.online:
            offered.update(agent.capabilities.runtimes)
    missing: dict[str, list[str]] = {}
    for task in workflow:
        if task.runtime not in offered:
            missing.setdefault(task.runtime, []).append(task.name)
    return missing


def check_runtimes(workflow: Workflow, agents: Iterable[AgentView]) -> None:
    """Raise ValidationError naming each runtime no online agent offers and the tasks needing it.

    Only meaningful once agents are known: with none online yet, a run may still
    wait for them, so callers skip the check then.
    """
    agents = list(agents)
    missing = missing_runtimes(workflow, agents)
    if not missing:
        return
    offered = sorted({r for a in agents if a.online for r in a.capabilities.runtimes})
    parts = []
    for runtime, tasks in sorted(missing.items()):
        shown = ", ".join(tasks[:5]) + (f" and {len(tasks) - 5} more" if len(tasks) > 5 else "")
        parts.append(f"runtime {runtime!r} (needed by task(s) {shown})")
    raise ValidationError(
        f"workflow {workflow.name!r} cannot run: no online agent offers "
        + "; ".join(parts)
        + f". Online agents offer: {', '.join(offered) or 'nothing'}. Start an agent with that runtime"
        " or change the tasks' runtime.",
        tasks=[t for tasks in missing.values() for t in tasks],
    )
