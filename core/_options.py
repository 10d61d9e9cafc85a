"""A misspelled option is refused where the workflow is built, naming the closest valid one.

``wf.shell("a", "echo", timout=5)`` must not be a ``TypeError`` about ``Task.__init__``
(or, worse, be accepted): the author needs the option's name, the task's, and what was
probably meant. Every builder that takes ``**options`` (``shell``, ``python``, the
patterns, container options, DAGonStar's ``DagonTask``) reports an unknown key this way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from dagon.core._errors import ValidationError
from dagon.protocol._settings import closest

__all__ = ["check_options", "check_task_options", "closest", "did_you_mean", "task_fields"]


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the entry of ``known`` closest to ``word``, or ``""``."""
    close = closest(word, known)
    return f" (did you mean {close!r}?)" if close else ""


def check_options(task: str, given: Iterable[str], known: Collection[str], *, what: str = "option") -> None:
    """Raise :class:`ValidationError` for the first key of ``given`` not in ``known``.

    Args:
        task: the task's name (for the message).
        given: the keys the author passed.
        known: the keys that are valid there.
        what: how the message names the key (``"option"``, ``"Slurm option"``).
    """
    for key in given:
        if key not in known:
            raise ValidationError(
                f"task {task!r}: unknown {what} {key!r}{did_you_mean(key, known)}; valid: {', '.join(sorted(known))}",
                tasks=[task],
            )


def task_fields(*, exclude: Iterable[str] = ()) -> frozenset[str]:
    """The :class:`~dagon.core.Task` fields a builder's ``**options`` may set (minus ``exclude``)."""
    from dagon.core._model import Task

    internal = {"name", "command", "map_over", *exclude}
    return frozenset(f.name for f in dataclasses.fields(Task) if f.name not in internal)


def check_task_options(task: str, options: Iterable[str], *, exclude: Iterable[str] = ()) -> None:
    """:func:`check_options` against the Task fields (``timeout``, ``env``, ``cpus`` …)."""
    check_options(task, options, task_fields(exclude=exclude))
