"""Meta-workflows: several workflows whose tasks reference each other's outputs.

:func:`meta_order` validates the whole set before anything runs — every
``workflow://Other/task/path`` names a workflow of the set and a task of it, and
there is no dependency cycle through tasks of different workflows — and returns
the workflows in the order a coordinator must receive them (producers first: a
coordinator resolves a cross-workflow reference against the runs it already holds).
"""

from __future__ import annotations

from collections.abc import Sequence

from dagon.core._errors import ValidationError
from dagon.core._model import Workflow, _topological

__all__ = ["meta_order"]


def meta_order(workflows: Sequence[Workflow], *, others: bool = False, outside: str = "") -> list[Workflow]:
    """The workflows, producers first; raises ValidationError naming what is wrong.

    Args:
        others: accept references to workflows outside the set (a standalone coordinator
            resolves them against the runs it already holds, e.g. another process's).
        outside: what the error says after "references workflow X, which" when a
            reference names no workflow of the set (default: it is not part of this meta-workflow).
    """
    by_name: dict[str, Workflow] = {}
    for wf in workflows:
        if wf.name in by_name:
            raise ValidationError(f"two workflows of the meta-workflow are named {wf.name!r}; names must be unique")
        by_name[wf.name] = wf
    combined: dict[str, frozenset[str]] = {}
    needs: dict[str, set[str]] = {name: set() for name in by_name}
    for wf in workflows:
        graph = wf.graph(external=True)
        for task, deps in graph.deps.items():
            edges = {f"{wf.name}/{d}" for d in deps}
            for ref in graph.external.get(task, ()):
                other = by_name.get(ref.workflow)
                if other is None and others:
                    continue
                if other is None:
                    why = outside or f"is not part of this meta-workflow (it has {', '.join(sorted(by_name))})"
                    raise ValidationError(
                        f"task {task!r} of workflow {wf.name!r} references workflow {ref.workflow!r} ({ref.text}),"
                        f" which {why}",
                        tasks=[task],
                    )
                if ref.task not in other:
                    raise ValidationError(
                        f"task {task!r} of workflow {wf.name!r} references {ref.text}, but workflow"
                        f" {ref.workflow!r} has no task {ref.task!r}",
                        tasks=[task],
                    )
                edges.add(f"{ref.workflow}/{ref.task}")
                needs[wf.name].add(ref.workflow)
            combined[f"{wf.name}/{task}"] = frozenset(edges)
    try:
        _topological(combined)
    except ValidationError as exc:
        raise ValidationError(f"meta-workflow: {exc} (across workflows)", tasks=exc.tasks) from None
    try:
        order = _topological({name: frozenset(deps) for name, deps in needs.items()})
    except ValidationError as exc:
        raise ValidationError(
            f"meta-workflow: workflows reference each other ({exc}); no task cycle, but a coordinator must receive"
            " producing workflows first — move the tasks so references between workflows go one way",
            tasks=exc.tasks,
        ) from None
    # _topological lists dependencies before dependents; keep the given order among independent workflows
    rank = {name: i for i, name in enumerate(order)}
    return sorted(workflows, key=lambda wf: (_depth(wf.name, needs), rank[wf.name]))


def _depth(name: str, needs: dict[str, set[str]]) -> int:
    """Longest chain of producing workflows below ``name`` (the graph is acyclic here)."""
    return 1 + max((_depth(dep, needs) for dep in needs[name]), default=-1)
