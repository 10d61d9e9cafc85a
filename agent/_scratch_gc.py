"""Really deleting scratch directories the coordinator no longer needs (garbage collection).

Only ``<scratch>/<run>/<task>-<attempt>`` and ``<scratch>/<run>`` are ever removed — or, for
attempts laid out as DAGonStar does, the ``<scratch>/<epoch ms>-<task>`` their record names
(``dagon.agent._layout``), with the record — each name checked as one safe path component;
a directory that is a symlink, or whose real path is not directly inside the real scratch root, is refused (so a
link planted in the scratch root cannot redirect a deletion elsewhere).
``shutil.rmtree`` removes links inside a task directory without following them.
Blocking: run it in a thread.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from dagon.agent._layout import StagingError, forget, indexed, indexed_name, safe_component, task_dir_name
from dagon.protocol import RunId, TaskRef

__all__ = ["delete_runs", "delete_tasks"]

log = logging.getLogger(__name__)


def _checked(scratch: Path, relative: Path) -> Path | None:
    root = scratch.resolve()
    path = scratch / relative
    try:
        if not path.exists() and not path.is_symlink():
            return None
        if path.is_symlink() or (len(relative.parts) > 1 and (scratch / relative.parts[0]).is_symlink()):
            raise StagingError(f"refusing to delete {relative}: it is (or is inside) a symbolic link")
        real = path.resolve()
    except OSError as exc:
        raise StagingError(f"refusing to delete {relative}: {exc}") from exc
    if root not in real.parents:
        raise StagingError(f"refusing to delete {relative}: it resolves outside the scratch root")
    return real


def delete_tasks(scratch: Path, refs: Iterable[TaskRef]) -> int:
    """Delete these attempts' task directories; returns how many were removed."""
    removed = 0
    for ref in refs:
        try:
            removed += _delete_task(scratch, ref.run, ref.task, ref.attempt)
        except StagingError as exc:
            log.warning("garbage collection: %s", exc)
    return removed


def _delete_task(scratch: Path, run: str, task: str, attempt: int) -> int:
    name = indexed_name(scratch, run, task, attempt)
    if name is not None:  # DAGonStar's layout: the directory its record names, then the record
        path = _checked(scratch, Path(name))
        if path is not None:
            shutil.rmtree(path)
        forget(scratch, run, task, attempt)
        return int(path is not None)
    path = _checked(scratch, task_dir_name(run, task, attempt))
    if path is None:
        return 0
    shutil.rmtree(path)
    try:
        path.parent.rmdir()  # the run's directory, once its last task directory went
    except OSError:
        pass
    return 1


def delete_runs(scratch: Path, runs: Iterable[RunId]) -> int:
    """Delete whole run directories (finished runs, ``dagon gc``); returns how many were removed."""
    removed = 0
    for run in runs:
        try:
            recorded = sum(_delete_task(scratch, run, task, attempt) for task, attempt in indexed(scratch, run))
            path = _checked(scratch, Path(safe_component(run, "run name")))
        except StagingError as exc:
            log.warning("garbage collection: %s", exc)
            continue
        if path is None:
            removed += recorded > 0  # a run laid out as DAGonStar does has no directory of its own
            continue
        shutil.rmtree(path)
        removed += 1
    return removed
