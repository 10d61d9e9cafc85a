"""DAGonStar compatibility: ``from dagon.task import DagonTask, TaskType``.

``DagonTask(TaskType.X, name, command, **options)`` builds a task the way
DAGonStar scripts do. It wraps a :class:`dagon.Task` (``.spec``): the type
picks the runtime (``BATCH`` → ``process``, ``DOCKER`` → ``docker``, …) and the
type's options become the task's ``runtime_options``. ``ip=`` (with
``ssh_username``, ``keypath``, ``ssh_port``) selects the remote variant, which
runs on the ``ssh`` runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dagon._compat_types import (
    RUNTIME_OF,
    SSH_OPTIONS,
    TYPE_OPTIONS,
    DataMover,
    StagerMover,
    Status,
    TaskType,
    native_options,
)
from dagon.core import Task, ValidationError, find_references
from dagon.protocol import check_plain

if TYPE_CHECKING:
    from dagon._workflow import Workflow

__all__ = ["DagonTask", "DataMover", "StagerMover", "Status", "TaskType"]

log = logging.getLogger(__name__)

# Accepted by DAGonStar's constructors but meaningless here: dagon chooses scratch
# directories and transfers itself.
_IGNORED: frozenset[str] = frozenset({"working_dir", "globusendpoint", "transversal_workflow"})


class DagonTask:
    """A DAGonStar task.

    Args:
        task_type: a :class:`TaskType`.
        name: unique within its workflow.
        command: a shell command; ``workflow:///TASK/PATH`` references add dependencies
            and stage data.
        **options: the type's options (``image=``, ``partition=``, …) and ``ip=`` /
            ``ssh_username=`` / ``keypath=`` / ``ssh_port=`` for the remote variant.

    Raises:
        ValidationError: an option the type does not have, or options that are not plain data.
    """

    def __init__(self, task_type: TaskType, name: str, command: str, **options: Any) -> None:
        if not isinstance(task_type, TaskType):
            raise ValidationError(f"task {name!r}: the first argument must be a TaskType, got {task_type!r}")
        accepted = TYPE_OPTIONS[task_type]
        unknown = sorted(set(options) - set(accepted) - set(SSH_OPTIONS) - _IGNORED)
        if unknown:
            raise ValidationError(
                f"task {name!r}: TaskType.{task_type.name} has no option(s) {unknown}; it accepts"
                f" {', '.join(accepted + SSH_OPTIONS)}",
                tasks=[name],
            )
        for key in sorted(set(options) & _IGNORED):
            log.warning("task %s: option %r is ignored (dagon chooses scratch directories and transfers)", name, key)
            options.pop(key)
        try:
            check_plain(options, "options")
        except Exception as exc:
            raise ValidationError(f"task {name!r}: options must be plain data ({exc})", tasks=[name]) from None
        self.task_type = task_type
        self.options: dict[str, Any] = dict(options)
        self.mode = "sequential"
        self.status = Status.READY
        self.working_dir: str | None = None
        self.exit_code: int | None = None
        self.workflow: Workflow | None = None
        self.nexts: list[DagonTask] = []
        self.prevs: list[DagonTask] = []
        self.data_mover: DataMover | None = None
        self.stager_mover: StagerMover | None = None
        runtime_options, fields = self._native()
        self.spec = Task(
            name=name,
            command=command,
            runtime=self.runtime,
            runtime_options=runtime_options,
            checkpoint=task_type is TaskType.CHECKPOINT,  # never garbage-collected
            **fields,
        )

    # -- what it maps to --------------------------------------------------------

    @property
    def remote(self) -> bool:
        return "ip" in self.options

    @property
    def runtime(self) -> str:
        return "ssh" if self.remote else RUNTIME_OF[self.task_type]

    def _native(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The dagon runtime's options (and Task fields) for this task's DAGonStar options."""
        if self.remote:
            return self.runtime_options, {}
        return native_options(self.task_type, {k: v for k, v in self.options.items() if k not in SSH_OPTIONS})

    @property
    def runtime_options(self) -> dict[str, Any]:
        """The options as DAGonStar took them (JSON export keeps these); the runtime gets ``_native()``'s."""
        opts = {k: v for k, v in self.options.items() if k not in SSH_OPTIONS}
        if not self.remote:
            return opts
        remote: dict[str, Any] = {"host": self.options["ip"], "runtime": RUNTIME_OF[self.task_type]}
        for key, target in (("ssh_username", "username"), ("keypath", "keypath"), ("ssh_port", "port")):
            if key in self.options:
                remote[target] = self.options[key]
        if opts:
            remote["options"] = opts
        return remote

    # -- DAGonStar API ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def command(self) -> str:
        return self.spec.command

    def add_dependency_to(self, task: DagonTask | Task | str) -> None:
        """This task runs after ``task`` (an explicit edge, kept in ``as_json``)."""
        name = task if isinstance(task, str) else task.name
        if name not in self.spec.after:
            self.spec.after = (*self.spec.after, name)
        if isinstance(task, DagonTask):
            if task not in self.prevs:
                self.prevs.append(task)
            if self not in task.nexts:
                task.nexts.append(self)

    def set_mode(self, mode: str) -> None:
        """``"parallel"``: run once per file the first ``workflow://`` reference matches
        (decided when its producer has finished); ``"sequential"``: once."""
        if mode == "sequential":
            self.spec.map_over = ""
        elif mode == "parallel":
            refs = find_references(self.spec.command, task=self.name)
            if not refs:
                raise ValidationError(
                    f"task {self.name!r}: parallel mode maps over the files of a workflow:// reference, and its"
                    " command has none",
                    tasks=[self.name],
                )
            self.spec.map_over = refs[0].text
        else:
            raise ValidationError(f"task {self.name!r}: mode must be 'sequential' or 'parallel', got {mode!r}")
        self.mode = mode

    def get_mode(self) -> str:
        return self.mode

    def get_scratch_dir(self) -> str | None:
        """Where the task ran (its scratch directory), once the workflow has run."""
        return self.working_dir

    def set_data_mover(self, mover: DataMover) -> None:
        mode = {DataMover.LINK: "symlink", DataMover.COPY: "copy"}.get(mover, "")
        self.spec.stage_mode = mode
        self.data_mover = mover

    def set_stager_mover(self, mover: StagerMover) -> None:
        self.stager_mover = mover

    def get_status(self) -> Status:
        return self.status

    def as_json(self) -> dict[str, Any]:
        """This task as JSON-able data: DAGonStar's fields plus everything needed to rebuild it."""
        spec = self.spec.to_dict()
        for key in ("name", "command", "runtime", "runtime_options", "map_over"):
            spec.pop(key, None)  # carried by the fields below
        return {
            "name": self.name,
            "type": self.task_type.value,
            "command": self.command,
            "status": self.status.name,
            "working_dir": self.working_dir,
            "nexts": [t.name for t in self.nexts],
            "prevs": [t.name for t in self.prevs],
            "options": dict(self.options),
            "mode": self.mode,
            "spec": spec,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DagonTask:
        """Rebuild a task from :meth:`as_json` (or from an original DAGonStar task document)."""
        if not isinstance(doc, Mapping) or "name" not in doc or "command" not in doc:
            raise ValidationError(f"a task document needs 'name' and 'command', got {doc!r:.100}")
        kind = str(doc.get("type", "batch")).lower()
        try:
            task_type = TaskType(kind) if kind != "singularity" else TaskType.APPTAINER
        except ValueError:
            known = ", ".join(sorted({t.value for t in TaskType}))
            raise ValidationError(f"task {doc['name']!r}: unknown type {kind!r} (known: {known})") from None
        task = cls(task_type, doc["name"], doc["command"], **dict(doc.get("options") or {}))
        extra = dict(doc.get("spec") or {})
        if extra:
            rebuilt = Task.from_dict(
                {**extra, "name": task.name, "command": task.command, "runtime": task.runtime,
                 "runtime_options": dict(task.spec.runtime_options)}
            )  # fmt: skip
            task.spec = rebuilt
        if doc.get("mode") == "parallel":
            task.set_mode("parallel")
        return task

    def __repr__(self) -> str:
        return f"<DagonTask {self.name!r} {self.task_type.name} -> runtime {self.runtime!r}>"
