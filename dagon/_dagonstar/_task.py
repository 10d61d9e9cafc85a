"""DAGonStar's task: ``DagonTask(TaskType.X, name, command, *options, **options)``.

``DagonTask(TaskType.X, name, command, **options)`` builds a task the way
DAGonStar scripts do. It wraps a :class:`dagon.Task` (``.spec``): the type
picks the runtime (``BATCH`` → ``process``, ``DOCKER`` → ``docker``, …) and the
type's options become the task's ``runtime_options``. ``ip=`` (with
``ssh_username``, ``keypath``, ``ssh_port``) selects the remote variant: it runs
on the agent at that address when one is online (agents announce their
addresses; ``Task.host``), else over SSH (:meth:`DagonTask.ssh_spec`, the ``ssh``
runtime) — the choice is made when the run starts (:mod:`dagon._runner`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dagon._dagonstar._types import (
    POSITIONAL,
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
from dagon.core._options import did_you_mean
from dagon.protocol import check_plain

if TYPE_CHECKING:
    from dagon._dagonstar._workflow import Workflow

__all__ = ["DagonTask", "DataMover", "StagerMover", "Status", "TaskType"]

log = logging.getLogger(__name__)

# Accepted by DAGonStar's constructors but meaningless here: dagon chooses scratch
# directories and transfers itself.
_IGNORED: frozenset[str] = frozenset({"working_dir", "globusendpoint", "transversal_workflow", "endpoint"})


def _plain(value: Any) -> Any:
    """Enum members (libcloud's ``Provider``, ``KeyOptions`` …) as their value, so options stay plain data."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class DagonTask:
    """A DAGonStar task.

    Args:
        task_type: a :class:`TaskType`.
        name: unique within its workflow.
        command: a shell command; ``workflow:///TASK/PATH`` references add dependencies
            and stage data.
        *args: options by position, in the order of DAGonStar's constructor of that type
            (:data:`~dagon._dagonstar._types.POSITIONAL`).
        **options: the type's options (``image=``, ``partition=``, …) and ``ip=`` /
            ``ssh_username=`` / ``keypath=`` / ``ssh_port=`` for the remote variant.

    Raises:
        ValidationError: an option the type does not have, or options that are not plain data.
    """

    def __init__(self, task_type: TaskType, name: str, command: str, *args: Any, **options: Any) -> None:
        if not isinstance(task_type, TaskType):
            raise ValidationError(f"task {name!r}: the first argument must be a TaskType, got {task_type!r}")
        order = POSITIONAL[task_type]
        if len(args) > len(order):
            raise ValidationError(
                f"task {name!r}: TaskType.{task_type.name} takes at most {len(order)} options by position"
                f" ({', '.join(order)}), got {len(args)}",
                tasks=[name],
            )
        for key, value in zip(order, args, strict=False):
            if key in options:
                raise ValidationError(f"task {name!r}: option {key!r} given by position and by name", tasks=[name])
            options[key] = value
        options = {key: _plain(value) for key, value in options.items() if value is not None}
        accepted = TYPE_OPTIONS[task_type]
        unknown = sorted(set(options) - set(accepted) - set(SSH_OPTIONS) - _IGNORED)
        if unknown:
            valid = (*accepted, *SSH_OPTIONS)
            raise ValidationError(
                f"task {name!r}: TaskType.{task_type.name} has no option(s) {unknown}"
                f"{did_you_mean(unknown[0], valid)}; it accepts {', '.join(valid)}",
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
        self._command = command
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
            host=str(options.get("ip", "")),
            **fields,
        )

    # -- what it maps to --------------------------------------------------------

    @property
    def remote(self) -> bool:
        return "ip" in self.options

    @property
    def runtime(self) -> str:
        """The dagon runtime of the type (an ``ip=`` task runs it on the agent at that address)."""
        return RUNTIME_OF[self.task_type]

    def _native(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The dagon runtime's options (and Task fields) for this task's DAGonStar options."""
        return native_options(self.task_type, self.runtime_options)

    @property
    def runtime_options(self) -> dict[str, Any]:
        """The type's options as DAGonStar took them (JSON export keeps these); the runtime gets ``_native()``'s."""
        return {k: v for k, v in self.options.items() if k not in SSH_OPTIONS}

    def ssh_spec(self) -> Task:
        """The task as the ``ssh`` runtime runs it on ``ip`` (when no agent is online at that address)."""
        if not self.remote:
            raise ValueError(f"task {self.name!r} has no ip=: it does not run over SSH")
        remote: dict[str, Any] = {"host": self.options["ip"], "runtime": self.runtime}
        for key, target in (("ssh_username", "username"), ("keypath", "keypath"), ("ssh_port", "port")):
            if key in self.options:
                remote[target] = self.options[key]
        if self.runtime_options:
            remote["options"] = self.runtime_options
        return dataclasses.replace(self.spec, runtime="ssh", runtime_options=remote, host="")

    # -- DAGonStar API ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def command(self) -> str:
        """The command as the script gave it (a CHECKPOINT's list of references, not the shell it becomes)."""
        return self._command

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
