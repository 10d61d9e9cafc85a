"""The DAGonStar half of :class:`dagon.Workflow` (``add_task``, ``make_dependencies``, ``as_json`` …).

Kept apart from the native builder so that ``dagon/_workflow.py`` stays small;
:class:`dagon.Workflow` inherits both.
"""

from __future__ import annotations

import contextvars
import json
import logging
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagon._compat_types import DataMover, StagerMover, Status, TaskType
from dagon._ini import DagonIni
from dagon.core import RunResult, Task, TaskFailed, TaskState, ValidationError
from dagon.core import Workflow as CoreWorkflow
from dagon.task import DagonTask

if TYPE_CHECKING:
    from dagon._workflow import Workflow

__all__ = ["DagonStarAPI", "failure_report"]

log = logging.getLogger(__name__)

JSON_FORMAT = "dagon-compat/1"


def failure_report(result: RunResult, *, lines: int = 5) -> dict[str, str]:
    """``{task: "exit code N: <last stderr lines>"}`` for every task that did not succeed."""
    report: dict[str, str] = {}
    for name, outcome in result.failed.items():
        if outcome.state is TaskState.FAILED:
            why = outcome.cause or "failed"
            tail = [line for line in outcome.stderr_tail.strip().splitlines() if line.strip()][-lines:]
            if outcome.error and outcome.error not in why:
                why += f" ({outcome.error})"
            report[name] = why + (": " + " | ".join(tail) if tail else "")
        else:
            report[name] = outcome.cause or outcome.state.value
    return report


class DagonStarAPI(CoreWorkflow):
    """DAGonStar's workflow methods, on top of the native model."""

    ini: DagonIni
    dry: bool
    _dagon_tasks: dict[str, DagonTask]
    _dagonstar: bool
    _data_mover: DataMover | None
    _stager_mover: StagerMover
    _launched: threading.Thread | None
    _launch_result: list[RunResult | BaseException]
    checkpoint_file: str | None

    # -- building ----------------------------------------------------------------

    def add_task(self, task: DagonTask | Task) -> None:
        """Add a :class:`~dagon.task.DagonTask` (or a native :class:`~dagon.Task`)."""
        self._dagonstar = True
        if isinstance(task, Task):
            self.add(task)
            return
        if not isinstance(task, DagonTask):
            raise ValidationError(f"add_task takes a DagonTask, got {type(task).__name__}")
        if self._data_mover is not None and task.data_mover is None:
            task.set_data_mover(self._data_mover)
        if task.task_type is TaskType.SLURM and "partition" not in task.options and self.ini.slurm_partition:
            task.options["partition"] = self.ini.slurm_partition
            task.spec.runtime_options = task._native()[0]
        self.add(task.spec)
        self._dagon_tasks[task.name] = task
        task.workflow = self  # type: ignore[assignment]

    def make_dependencies(self) -> None:
        """Infer edges from ``workflow://`` references (plus explicit ones) and reject cycles."""
        graph = self.graph(external=True)
        for task in self._dagon_tasks.values():
            task.prevs, task.nexts = [], []
        for name, deps in graph.deps.items():
            consumer = self._dagon_tasks.get(name)
            for dep in sorted(deps):
                producer = self._dagon_tasks.get(dep)
                if consumer is not None and producer is not None:
                    consumer.prevs.append(producer)
                    producer.nexts.append(consumer)

    def find_task_by_name(self, workflow: str, task: str) -> DagonTask | Task | None:
        if workflow not in ("", self.name) or task not in self:
            return None
        return self._dagon_tasks.get(task) or self[task]

    # -- settings ----------------------------------------------------------------

    def set_dry(self, dry: bool) -> None:
        """Dry run: ``run()`` validates and prints the plan, and nothing else happens."""
        self.dry = bool(dry)

    def get_dry(self) -> bool:
        return self.dry

    def get_scratch_dir_base(self) -> str | None:
        base = self.ini.scratch_dir_base
        return str(base) if base is not None else None

    def set_data_mover(self, mover: DataMover) -> None:
        self._data_mover = mover
        for task in self._dagon_tasks.values():
            task.set_data_mover(mover)

    def get_data_mover(self) -> DataMover | None:
        return self._data_mover

    def set_stager_mover(self, mover: StagerMover) -> None:
        self._stager_mover = mover

    # -- JSON ----------------------------------------------------------------------

    def as_json(self) -> dict[str, Any]:
        """The workflow as JSON-able data; :meth:`load_json` rebuilds it exactly
        (task types, options, modes, explicit edges, every native option)."""
        tasks: dict[str, Any] = {}
        for task in self:
            compat = self._dagon_tasks.get(task.name)
            if compat is not None:
                tasks[task.name] = compat.as_json()
            else:
                tasks[task.name] = {"name": task.name, "command": task.command, "native": task.to_dict()}
        return {"format": JSON_FORMAT, "name": self.name, "id": 0, "tasks": tasks}

    def load_json(self, doc: Mapping[str, Any] | str | Path) -> None:
        """Add the tasks of a document made by :meth:`as_json` (or by DAGonStar), or of a JSON file."""
        if isinstance(doc, str | Path):
            path = Path(doc)
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValidationError(f"cannot load workflow JSON from {str(path)!r}: {exc}") from exc
        if not isinstance(doc, Mapping) or not isinstance(doc.get("tasks"), Mapping | list):
            raise ValidationError("a workflow JSON document needs a 'tasks' mapping")
        self._dagonstar = True
        items = doc["tasks"].values() if isinstance(doc["tasks"], Mapping) else doc["tasks"]
        legacy_edges: list[tuple[DagonTask, str]] = []
        for item in items:
            if isinstance(item, Mapping) and "native" in item:
                self.add(Task.from_dict(item["native"]))
                continue
            task = DagonTask.from_json(item)
            self.add_task(task)
            if "spec" not in item:  # an original DAGonStar document: its prevs are the edges
                legacy_edges.extend((task, p) for p in item.get("prevs") or ())
        for task, prev in legacy_edges:
            task.add_dependency_to(prev)

    # -- after a run ------------------------------------------------------------------

    def _absorb(self, result: RunResult, *, local_scratch: bool) -> None:
        """Copy each task's outcome onto its DagonTask; honour ``remove_dir``."""
        for name, task in self._dagon_tasks.items():
            outcome = result.tasks.get(name)
            if outcome is not None:
                task.status = Status.FINISHED if outcome.ok else Status.FAILED
                task.working_dir = outcome.workdir or None
                task.exit_code = outcome.exit_code
                continue
            copies = [o for n, o in result.tasks.items() if n.startswith(name + "_")]
            task.status = Status.FINISHED if copies and all(o.ok for o in copies) else Status.FAILED
            if not copies and result.ok:
                task.status = Status.FINISHED  # a parallel task that matched no files
        if not self.ini.remove_dir:
            return
        if not local_scratch:
            log.info("remove_dir: scratch directories belong to the broker's agents; nothing removed here")
            return
        graph = self.graph(external=True)
        needed = {dep for deps in graph.deps.values() for dep in deps}
        for name, outcome in result.tasks.items():
            compat = self._dagon_tasks.get(name)
            if compat is not None and compat.task_type is TaskType.CHECKPOINT:
                continue  # a checkpoint's outputs are kept
            if name in needed and outcome.workdir and Path(outcome.workdir).is_dir():
                shutil.rmtree(outcome.workdir, ignore_errors=True)
                if compat is not None:
                    compat.working_dir = None
                log.debug("removed scratch directory of %s (remove_dir)", name)

    def _raise_failures(self, result: RunResult) -> None:
        if result.ok:
            return
        report = failure_report(result)
        for name, why in report.items():
            log.error("task %s: %s", name, why)
        raise TaskFailed(self.name, report or {"run": result.cause})

    # -- non-blocking -----------------------------------------------------------------

    def launch(self) -> None:
        """Start ``run()`` in a background thread; :meth:`wait` for it."""
        if self._launched is not None:
            raise RuntimeError(f"workflow {self.name!r} was already launched")
        me: Workflow = self  # type: ignore[assignment]

        def target() -> None:
            try:
                result = me.run()
                if result is not None:
                    self._launch_result.append(result)
            except BaseException as exc:  # handed to wait()
                self._launch_result.append(exc)

        # The caller's context travels along (under `dagon run`: its broker, dry-run flag, results).
        context = contextvars.copy_context()
        self._launched = threading.Thread(target=context.run, args=(target,), name=f"dagon-{self.name}", daemon=True)
        self._launched.start()

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Wait for :meth:`launch`; re-raises what ``run()`` raised. None if still running after ``timeout``."""
        if self._launched is None:
            raise RuntimeError(f"workflow {self.name!r} was not launched")
        self._launched.join(timeout)
        if self._launched.is_alive():
            return None
        if not self._launch_result:
            return None
        outcome = self._launch_result[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
