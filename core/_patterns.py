"""Parallel patterns: map/scatter, gather/reduce, parameter sweeps, dynamic fan-out.

Static patterns (a list of items, a parameter grid) are expanded while the
workflow is built: they are ordinary tasks by the time anything runs.

A *dynamic* map is one template task with ``map_over="workflow:///P/GLOB"``.
When the template becomes ready (``P`` has succeeded), the engine asks
:func:`expand_map` for one task per file of ``P``'s output manifest matching
``GLOB`` — each a copy of the template whose references to the glob point at
that one file — and :func:`retarget` rewrites every dependent's references to
the template (``workflow:///M/out.txt``) into references to all of the copies.
The functions here are pure; the engine owns the bookkeeping.

Placeholders in static patterns are ``{item}``, ``{index}`` and, for sweeps,
``{PARAM}``; nothing else in a command is touched (so ``${HOME}`` and brace
expansions stay as they are).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, Final

from dagon.core._errors import ValidationError
from dagon.core._model import Task, Workflow
from dagon.core._options import check_task_options
from dagon.core._refs import Reference, find_references
from dagon.protocol import NAME_RE, REFERENCE_RE

__all__ = ["expand_map", "gather", "match_outputs", "retarget", "scatter", "sweep"]

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")


def match_outputs(pattern: str, paths: Iterable[str]) -> list[str]:
    """The ``paths`` (relative, ``/``-separated) matching the shell glob ``pattern``, sorted.

    ``*``, ``?`` and ``[...]`` match within one path component; ``**`` matches any
    number of components.
    """
    want = pattern.split("/")
    return sorted(p for p in paths if _match_parts(want, p.split("/")))


def _match_parts(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        return any(_match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _match_parts(pattern[1:], parts[1:])


def _suffix(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "item"


def expand_map(template: Task, files: Sequence[str], *, workflow: str, taken: Iterable[str]) -> list[Task]:
    """One task per file: the template with its ``map_over`` glob narrowed to that file.

    Names are ``TEMPLATE_STEM`` (as DAGonStar's parallel mode names them), made
    unique with the file's index where two files share a stem or a name is taken.
    Each copy gets ``DAGON_ITEM`` (the file's path in the producer's directory) and
    ``DAGON_INDEX`` in its environment.
    """
    ref = template.map_reference()
    assert ref is not None, "expand_map needs a template with map_over"
    used = set(taken)
    out: list[Task] = []
    for index, path in enumerate(files):
        stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
        name = f"{template.name}_{_suffix(stem)}"
        if name in used or len(name) > 200 or NAME_RE.fullmatch(name) is None:
            name = f"{template.name}_{index}"
        used.add(name)
        concrete = f"workflow://{ref.workflow}/{ref.task}/{path}"

        def narrow(text: str, concrete: str = concrete) -> str:
            return REFERENCE_RE.sub(lambda m: concrete if m.group(0) == ref.text else m.group(0), text)

        env = dict(template.env)
        env.update(DAGON_ITEM=path, DAGON_INDEX=str(index))
        command = narrow(template.command)
        inputs = tuple(narrow(i) for i in template.inputs)
        if concrete not in command and concrete not in inputs:
            inputs = (*inputs, concrete)  # the glob was only in map_over: stage the file anyway
        out.append(dataclasses.replace(template, name=name, command=command, inputs=inputs, env=env, map_over=""))
    return out


def retarget(task: Task, template: str, copies: Sequence[str], *, workflow: str) -> Task:
    """``task`` with every reference to ``template`` replaced by references to all ``copies``.

    ``workflow:///M/out.txt`` becomes ``workflow:///M_a/out.txt workflow:///M_b/out.txt …``
    (nothing when there are no copies); ``after`` entries are replaced likewise.
    """

    def widen(m: re.Match[str]) -> str:
        wf, producer, rest = m.group(1), m.group(2), m.group(3) or ""
        if producer != template or wf not in ("", workflow):
            return m.group(0)
        return " ".join(f"workflow://{wf}/{c}{rest}" for c in copies)

    command = REFERENCE_RE.sub(widen, task.command) if task.runtime != "python" else task.command
    inputs: list[str] = []
    for text in task.inputs:
        refs = find_references(text, task=task.name)
        if refs and refs[0].task == template and refs[0].workflow in ("", workflow):
            inputs.extend(f"workflow://{refs[0].workflow}/{c}/{refs[0].path}" for c in copies)
        else:
            inputs.append(text)
    after: list[str] = []
    for name in task.after:
        after.extend(copies if name == template else [name])
    return dataclasses.replace(task, command=command, inputs=tuple(inputs), after=tuple(after))


# -- static patterns (build time) ---------------------------------------------


def _fill(command: str, values: Mapping[str, Any]) -> str:
    for key, value in values.items():
        command = command.replace("{" + key + "}", str(value))
    return command


def scatter(
    wf: Workflow, name: str, command: str, items: Iterable[Any], *, after: Iterable[str | Task] = (), **options: Any
) -> list[Task]:
    """Map over a list: one task ``NAME_i`` per item, ``{item}`` and ``{index}`` filled in."""
    check_task_options(name, options, exclude=("after",))
    values = list(items)
    if not values:
        raise ValidationError(f"scatter {name!r}: no items to map over", tasks=[name])
    deps = _names(after)
    tasks = []
    for index, item in enumerate(values):
        filled = _fill(command, {"item": item, "index": index})
        tasks.append(wf.add(Task(name=f"{name}_{index}", command=filled, after=deps, **options)))
    return tasks


def sweep(
    wf: Workflow,
    name: str,
    command: str,
    params: Mapping[str, Iterable[Any]],
    *,
    after: Iterable[str | Task] = (),
    **options: Any,
) -> list[Task]:
    """A parameter sweep: one task per point of the cartesian product of ``params``.

    Tasks are named ``NAME_k1-v1_k2-v2`` (values made name-safe; the index is used
    if that is not unique); ``{k1}``, ``{k2}``, … and ``{index}`` are filled in.
    """
    check_task_options(name, options, exclude=("after",))
    if not params:
        raise ValidationError(f"sweep {name!r}: no parameters", tasks=[name])
    keys = list(params)
    grids = [list(params[k]) for k in keys]
    if any(not g for g in grids):
        raise ValidationError(f"sweep {name!r}: every parameter needs at least one value", tasks=[name])
    deps = _names(after)
    tasks: list[Task] = []
    seen: set[str] = set()
    for index, point in enumerate(itertools.product(*grids)):
        values = dict(zip(keys, point, strict=True))
        task_name = f"{name}_" + "_".join(f"{_suffix(k)}-{_suffix(str(v))}" for k, v in values.items())
        if task_name in seen or len(task_name) > 200:
            task_name = f"{name}_{index}"
        seen.add(task_name)
        filled = _fill(command, {**values, "index": index})
        tasks.append(wf.add(Task(name=task_name, command=filled, after=deps, **options)))
    return tasks


def gather(wf: Workflow, name: str, command: str, over: Iterable[str | Task], path: str, **options: Any) -> Task:
    """Reduce: one task after all of ``over``; ``{inputs}`` becomes their ``path`` references.

    For a dynamic map pass the template: ``workflow:///TEMPLATE/PATH`` is widened to
    every copy when the map is expanded.
    """
    check_task_options(name, options, exclude=("after",))
    producers = _names(over)
    if not producers:
        raise ValidationError(f"gather {name!r}: nothing to gather", tasks=[name])
    refs = " ".join(f"workflow:///{p}/{path}" for p in producers)
    filled = command.replace("{inputs}", refs)
    after = tuple(p for p in producers if f"workflow:///{p}/" not in filled)
    return wf.add(Task(name=name, command=filled, after=after, **options))


def _names(items: Iterable[str | Task]) -> tuple[str, ...]:
    return tuple(item.name if isinstance(item, Task) else item for item in items)


def references_to(task: Task, producer: str, workflow: str) -> list[Reference]:
    """References of ``task`` to ``producer`` of this workflow (used by the engine)."""
    return [r for r in task.references() if r.task == producer and r.workflow in ("", workflow)]
