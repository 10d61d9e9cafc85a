"""The engine's links between runs and its dynamic fan-out: functions over the engine's state.

* **Meta-workflows** — a task may reference another workflow's output
  (``workflow://Other/task/path``). At submission the reference resolves to the
  latest run of ``Other`` on this engine; the producer task counts as one more
  unfinished dependency of the consumer (released when it succeeds, failing it
  when it fails), exactly like a dependency inside one run.
* **Inputs** — what a task reads and from which producer attempt (``stage_inputs``),
  and where those bytes are (``input_hosts``, ``locality``: for placement).
* **Dynamic maps** — a task with ``map_over`` is a template: when it becomes
  ready its producer's output manifest decides how many copies run (see
  :mod:`dagon.core._patterns`); the copies replace it and its dependents wait
  for all of them.

Sans-IO like the engine: plain synchronous bookkeeping, no clock, no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagon.core._errors import ValidationError
from dagon.core._fit import locality_of
from dagon.core._patterns import expand_map, match_outputs, retarget
from dagon.core._states import TERMINAL, RunState, TaskState
from dagon.core._views import TaskView
from dagon.protocol import AgentId, StageInput, TaskName

if TYPE_CHECKING:
    from dagon.core._engine import Engine
    from dagon.core._model import Graph, Workflow
    from dagon.core._placement import Locality
    from dagon.core._refs import Reference
    from dagon.core._views import RunView

__all__ = [
    "check_references",
    "expand",
    "input_hosts",
    "link_external",
    "locality",
    "producer_of",
    "resolve_external",
    "stage_inputs",
]

_S = TaskState


def check_references(engine: Engine, workflow: Workflow, graph: Graph) -> None:
    """Raise ValidationError if a reference to another workflow names no known run or task."""
    resolve_external(engine, workflow.name, graph)


def resolve_external(engine: Engine, workflow: str, graph: Graph) -> dict[str, set[TaskView]]:
    """Producers in other runs of the references in ``graph.external``; raises before anything changes."""
    links: dict[str, set[TaskView]] = {}
    for name, refs in graph.external.items():
        for ref in refs:
            run_id = engine._named.get(ref.workflow)
            producer_run = engine.runs.get(run_id) if run_id is not None else None
            if producer_run is None:
                raise ValidationError(
                    f"task {name!r} of workflow {workflow!r} references workflow {ref.workflow!r} ({ref.text}),"
                    f" which has no run on this coordinator: submit {ref.workflow!r} first, or both together"
                    " as a meta-workflow",
                    tasks=[name],
                )
            producer = producer_run.tasks.get(ref.task)
            if producer is None:
                raise ValidationError(
                    f"task {name!r} of workflow {workflow!r} references {ref.text}, but run {run_id} of"
                    f" workflow {ref.workflow!r} has no task {ref.task!r}",
                    tasks=[name],
                )
            links.setdefault(name, set()).add(producer)
    return links


def link_external(engine: Engine, run: RunView, links: dict[str, set[TaskView]]) -> None:
    """A cross-run dependency is one more unfinished dependency, released when the producer succeeds."""
    failed: list[tuple[TaskView, TaskView]] = []
    for name, producers in links.items():
        view = run.tasks[name]
        for producer in producers:
            run.external[(producer.run.workflow.name, producer.name)] = producer
            if producer.state is _S.SUCCEEDED:
                continue
            if producer.state in TERMINAL:
                failed.append((view, producer))
                continue
            view.waiting += 1
            producer.dependents.append(view)
    for view, producer in failed:
        if view.state is _S.PENDING:
            _upstream_failed(engine, view, f"task {producer.name!r} of run {producer.run.id} {producer.state.value}")


def _upstream_failed(engine: Engine, view: TaskView, cause: str) -> None:
    engine._move(view, _S.UPSTREAM_FAILED, cause)
    engine._fail_dependents(view)


def expand(engine: Engine, template: TaskView) -> None:
    """Replace a ready map template by one task per matching output file of its producer."""
    run = template.run
    spec = template.spec
    ref = spec.map_reference()
    assert ref is not None
    producer = run.tasks[ref.task]
    outputs = [o.path for o in producer.result.outputs] if producer.result is not None else []
    files = match_outputs(ref.path, outputs)
    copies = expand_map(spec, files, workflow=run.workflow.name, taken=run.tasks)
    names = [c.name for c in copies]
    # The template leaves the run (it never runs); its copies take its place (in
    # order: the dict is reordered in place, as results may already hold it).
    names_after = list(run.tasks)
    tail = [(n, run.tasks[n]) for n in names_after[names_after.index(spec.name) + 1 :]]
    for n, _ in tail:
        del run.tasks[n]
    del run.tasks[spec.name]
    run.counts[template.state] -= 1
    run.unfinished -= 1
    graph = run.graph
    deps = graph.deps.pop(spec.name, frozenset())
    graph.refs.pop(spec.name, None)
    views = []
    for task in copies:
        view = TaskView(task, run)
        run.tasks[task.name] = view
        run.counts[_S.PENDING] += 1
        run.unfinished += 1
        graph.deps[task.name] = deps
        graph.refs[task.name] = tuple(task.references())
        views.append(view)
    run.tasks.update(tail)
    released = []
    for child in template.dependents:
        if child.state is not _S.PENDING:
            continue
        child_run = child.run
        child.spec = retarget(child.spec, spec.name, names, workflow=run.workflow.name)
        refs = tuple(child.spec.references())
        child_run.graph.refs[child.name] = refs
        if child_run is not run:
            child_run.graph.external[child.name] = tuple(
                r for r in refs if r.workflow not in ("", child_run.workflow.name)
            )
            for view in views:
                child_run.external[(run.workflow.name, view.name)] = view
        else:
            child_run.graph.deps[child.name] = frozenset(
                (set(child_run.graph.deps.get(child.name, ())) - {spec.name}) | set(names)
            )
        child.waiting += len(views) - 1
        for view in views:
            view.dependents.append(child)
        if child.waiting == 0:
            released.append(child)
    cause = f"one of {len(views)} task(s) mapped over {ref.text}"
    for view in views:
        engine._make_ready(view, cause)
    for child in released:
        engine._make_ready(child, f"{spec.name!r} matched no files")
    if run.unfinished == 0 and run.state is RunState.RUNNING:
        engine._finish_run(run)


def stage_inputs(view: TaskView) -> tuple[StageInput, ...]:
    """What a task reads, each with the producer attempt and where that ran (the coordinator's
    ``DataSources`` add a URL and a grant for inputs on other hosts)."""
    run = view.run
    inputs = []
    for ref in run.graph.refs_of(view.spec.name):
        producer = producer_of(run, ref)
        inputs.append(
            StageInput(
                ref=ref.text,
                workflow=ref.workflow or run.workflow.name,
                task=TaskName(ref.task),
                path=ref.path,
                source_agent=producer.agent or AgentId(""),
                source_host=producer.host,
                source_dir=producer.workdir,
                source_run=producer.run.id,
                source_attempt=producer.attempt,
                verify=producer.restored,
            )
        )
    return tuple(inputs)


def input_hosts(view: TaskView) -> frozenset[str]:
    """The hosts the producers of a task's inputs ran on."""
    refs = view.run.graph.refs_of(view.spec.name)
    if not refs:
        return frozenset()
    run = view.run
    return frozenset(producer_of(run, r).host for r in refs)


def locality(view: TaskView) -> Locality | None:
    """Where a task's input bytes are (for placement; None: it reads nothing)."""
    refs = view.run.graph.refs_of(view.spec.name)
    if not refs:
        return None
    run = view.run
    return locality_of(view, ((producer_of(run, r), r.path) for r in refs))


def producer_of(run: RunView, ref: Reference) -> TaskView:
    """The task a reference of ``run`` points at (in ``run`` or, linked at submission, in another run)."""
    if ref.workflow in ("", run.workflow.name):
        return run.tasks[ref.task]
    return run.external[(ref.workflow, ref.task)]
