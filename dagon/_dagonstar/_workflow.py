"""``dagon.Workflow``: the native workflow with DAGonStar's API on top (``add_task``, ``as_json`` …).

A subclass of :class:`dagon._workflow.NativeWorkflow`, so the native builder
(``shell``, ``map`` …) and DAGonStar's methods work on one object, and DAGonStar
scripts run unchanged. What DAGonStar did differently and dagon keeps on purpose
is said in ``docs/dagonstar.md``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import shutil
import threading
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagon._dagonstar._checkpoint import checkpoint_command
from dagon._dagonstar._task import DagonTask
from dagon._dagonstar._types import DataMover, StagerMover, Status, TaskType
from dagon._ini import DagonIni, load_ini
from dagon._runner import RunOptions, checkpoint_scratch, read_checkpoint
from dagon._settings import dagon_home
from dagon._workflow import NativeWorkflow
from dagon.core import RunResult, Task, ValidationError
from dagon.core import Workflow as CoreWorkflow
from dagon.core._refs import check_name

__all__ = ["JSON_FORMAT", "Workflow", "members"]

log = logging.getLogger(__name__)

JSON_FORMAT = "dagon-compat/1"

# DAGonStar documents name a task's type by its class (``type(task).__name__.lower()``).
_CLASS_TYPES: dict[str, TaskType] = {
    "batch": TaskType.BATCH, "remotebatch": TaskType.BATCH, "checkpoint": TaskType.CHECKPOINT,
    "slurm": TaskType.SLURM, "remoteslurm": TaskType.SLURM, "cloudtask": TaskType.CLOUD,
    "dockertask": TaskType.DOCKER, "dockerremotetask": TaskType.DOCKER,
    "apptainertask": TaskType.APPTAINER, "remoteapptainertask": TaskType.APPTAINER,
    "singularity": TaskType.APPTAINER, "kubernetestask": TaskType.KUBERNETES,
    "remotekubernetestask": TaskType.KUBERNETES, "nomadtask": TaskType.NOMAD, "remotenomadtask": TaskType.NOMAD,
}  # fmt: skip


class Workflow(NativeWorkflow):
    """A DAG of tasks that can run itself, with DAGonStar's API.

    Args:
        name: workflow name (used by ``workflow://NAME/...`` references).
        config: DAGonStar configuration as a dict of sections (``{"batch": {...}}``), or
            flat (``{"scratch_dir_base": ...}``: the ``[batch]`` section), instead of ``config_file``.
        config_file: a ``dagon.ini`` (read if it exists; see :mod:`dagon._ini`).
        max_threads: accepted for DAGonStar scripts; concurrency is the agents' slots.
        jsonload: a document from :meth:`as_json` (or a JSON file) to load the tasks from.
        checkpoint_file: a file recording which run this is (JSON, written at submission),
            so that ``run(resume_checkpoint_file=...)`` can resume it after a crash.
        configure_logging: apply the ini file's ``logging.config`` sections (off: dagon
            never reconfigures a script's logging behind its back).

    Attributes (DAGonStar's): ``cfg`` (the configuration as a dict of sections),
    ``logger``, ``workflow_id`` (the run id once it ran), ``tasks`` (a list),
    ``dag_tps`` (the meta-workflow it was added to), ``checkpoint_file``.
    """

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any] | None = None,
        config_file: str | os.PathLike[str] = "dagon.ini",
        max_threads: int = 10,
        jsonload: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        checkpoint_file: str | None = None,
        *,
        configure_logging: bool = False,
    ) -> None:
        super().__init__(name)
        self.ini: DagonIni = load_ini(config, Path(config_file))
        sections = {section: dict(values) for section, values in self.ini.sections.items()}
        self.cfg: defaultdict[str, dict[str, str]] = defaultdict(dict, sections)
        self.logger = logging.getLogger(f"dagon.workflow.{name}")
        self.workflow_id: str | int = 0
        self.dag_tps: Any = None
        self.max_threads = max_threads
        self.checkpoint_file = checkpoint_file
        self._dagon_tasks: dict[str, DagonTask] = {}
        self._dagonstar = config is not None or jsonload is not None
        self._data_mover: DataMover | None = None
        self._stager_mover = StagerMover.NORMAL
        self._launched: threading.Thread | None = None
        self._launch_result: list[RunResult | BaseException] = []
        # DAGonStar fixes a run's scratch directory when the workflow is made (run_base has the time in it).
        self._scratch = self.ini.scratch_for_run()
        if configure_logging:
            self.ini.configure_logging()
        if jsonload is not None:
            self._load(jsonload if isinstance(jsonload, Mapping) else Path(jsonload), rename=False)

    # -- building ----------------------------------------------------------------

    @property
    def tasks(self) -> Any:
        """DAGonStar's ``tasks``: a list of the tasks, in insertion order, for a DAGonStar-style workflow
        (one built with ``add_task``, ``config=`` or ``jsonload=``); the native ``{name: Task}`` otherwise."""
        if not self._dagonstar:
            return super().tasks
        return [self._dagon_tasks.get(task.name) or task for task in self]

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
        if task.task_type is TaskType.CHECKPOINT:
            task.spec.command = checkpoint_command(task.name, task.command, workflow=self.name)
        self.add(task.spec)
        self._dagon_tasks[task.name] = task
        task.workflow = self

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

    def Validate_WF(self) -> None:
        """Raise :class:`~dagon.ValidationError` (naming the tasks) if the workflow has a cycle or is invalid."""
        self.graph(external=True)

    def set_dag_tps(self, dag_tps: Any) -> None:
        """Note the meta-workflow (``DAG_TPS``) this workflow belongs to."""
        self.dag_tps = dag_tps

    def find_task_by_name(self, workflow_name: str, task_name: str) -> DagonTask | Task | None:
        """The task ``task_name`` if ``workflow_name`` is this workflow's name, else None."""
        if workflow_name not in ("", self.name) or task_name not in self:
            return None
        return self._dagon_tasks.get(task_name) or self[task_name]

    # -- settings ----------------------------------------------------------------

    def get_scratch_dir_base(self) -> str:
        """Where this workflow's task directories go: ``scratch_dir_base[/run_base]`` of the ini,
        else the embedded agent's default (with a broker, each agent's own scratch root)."""
        return str(self._scratch if self._scratch is not None else dagon_home() / "scratch")

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
        return {"format": JSON_FORMAT, "name": self.name, "id": self.workflow_id, "tasks": tasks}

    def load_json(self, doc: Mapping[str, Any] | str | Path) -> None:
        """Add the tasks of a document made by :meth:`as_json` (or by DAGonStar), or of a JSON file;
        the workflow takes the document's name, as in DAGonStar."""
        self._load(doc, rename=True)

    def _load(self, doc: Mapping[str, Any] | str | Path, *, rename: bool) -> None:
        if isinstance(doc, str | Path):
            path = Path(doc)
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValidationError(f"cannot load workflow JSON from {str(path)!r}: {exc}") from exc
        if not isinstance(doc, Mapping) or not isinstance(doc.get("tasks"), Mapping | list):
            raise ValidationError("a workflow JSON document needs a 'tasks' mapping")
        if rename and doc.get("name"):
            check_name("workflow", doc["name"])
            self.name = doc["name"]
        self._dagonstar = True
        items = doc["tasks"].values() if isinstance(doc["tasks"], Mapping) else doc["tasks"]
        legacy_edges: list[tuple[DagonTask, str]] = []
        for item in items:
            if isinstance(item, Mapping) and "native" in item:
                self.add(Task.from_dict(item["native"]))
                continue
            item = _typed(item)
            task = DagonTask.from_json(item)
            self.add_task(task)
            if "spec" not in item:  # an original DAGonStar document: its prevs are the edges
                legacy_edges.extend((task, p) for p in item.get("prevs") or ())
        for task, prev in legacy_edges:
            # a prev of another workflow is a workflow://Other/... reference in the command: not an edge here
            if prev in self:
                task.add_dependency_to(prev)

    # -- running -----------------------------------------------------------------------

    def run(
        self,
        resume_checkpoint_file: str | None = None,
        *,
        broker: str | None = None,
        coordinator: str | None = None,
        dry_run: bool = False,
        progress: bool | None = None,
        check: bool | None = None,
        keep_scratch: bool = False,
    ) -> RunResult | None:
        """Run to completion and return the result (blocking; for scripts).

        Args:
            resume_checkpoint_file: DAGonStar's checkpoint file: if it names a run (written by an
                earlier ``run()`` with it or with ``checkpoint_file``), that run is resumed from the
                run store — its succeeded tasks are kept, the rest runs; if it is absent or empty,
                the workflow runs afresh and the file is written for next time.
            broker, coordinator, dry_run, progress, keep_scratch: as for the native ``run()``.
            check: raise :class:`~dagon.core.TaskFailed` — naming each failed task with its exit
                code and stderr tail — if the run did not succeed. Default: on for DAGonStar-style
                workflows (a failed run raises, as a failed script does), off for native ones.

        Returns:
            The run's result, or None for a dry run (or under ``dagon submit``).
        """
        checkpoint = resume_checkpoint_file or self.checkpoint_file
        resume_run = read_checkpoint(Path(resume_checkpoint_file), self.name) if resume_checkpoint_file else None
        if resume_run is not None and self._scratch is not None:
            # As DAGonStar: the rest of a resumed run goes where its first part went.
            self._scratch = checkpoint_scratch(Path(resume_checkpoint_file or "")) or self._scratch
        options = RunOptions.resolve(
            broker=broker,
            coordinator=coordinator,
            dry_run=dry_run or self.dry,
            progress=progress,
            check=check,
            check_default=self._dagonstar,
            # DAGonStar keeps every task directory unless its ini says remove_dir
            keep_scratch=keep_scratch or (self._dagonstar and not self.ini.remove_dir),
            scratch=self._scratch,
            resume_run=resume_run,
            checkpoint=Path(checkpoint) if checkpoint else None,
        )
        return self._run(options)

    def _routed(self, hosts: frozenset[str]) -> CoreWorkflow:
        """``ip=`` tasks whose address no online agent announces go over SSH instead (``DagonTask.ssh_spec``)."""
        over_ssh = {t.name: t.ssh_spec() for t in self._dagon_tasks.values() if t.remote and t.spec.host not in hosts}
        if not over_ssh:
            return self
        routed = CoreWorkflow(self.name)
        for task in self:
            routed.add(over_ssh.get(task.name, task))
        return routed

    def _after_run(self, result: RunResult, options: RunOptions) -> None:
        """Copy each task's outcome onto its DagonTask; honour ``remove_dir``."""
        self.workflow_id = result.run
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
        if not options.local_scratch:
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

    # -- non-blocking -----------------------------------------------------------------

    def launch(self) -> None:
        """Start ``run()`` in a background thread; :meth:`wait` for it."""
        if self._launched is not None:
            raise RuntimeError(f"workflow {self.name!r} was already launched")

        def target() -> None:
            try:
                result = self.run()
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


def _typed(item: Any) -> Any:
    """A task document whose ``type`` is DAGonStar's class name mapped to the TaskType value."""
    if isinstance(item, Mapping) and isinstance(item.get("type"), str):
        found = _CLASS_TYPES.get(item["type"].lower())
        if found is not None:
            return {**item, "type": found.value}
    return item


def members(workflows: list[CoreWorkflow]) -> list[Workflow]:
    """The DAGonStar workflows among ``workflows``."""
    return [wf for wf in workflows if isinstance(wf, Workflow)]
