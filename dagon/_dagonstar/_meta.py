"""DAGonStar's meta-workflow: ``from dagon.dag_tps import DAG_TPS``.

Its members run together on one coordinator (see :class:`dagon.MetaWorkflow`);
``workflow://Other/task/path`` references link them, and a cycle through several
workflows is rejected before anything runs (``Validate_WF``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagon._dagonstar._workflow import members
from dagon._meta import MetaWorkflow
from dagon.core import Task, find_references
from dagon.core import Workflow as CoreWorkflow
from dagon.core._meta_order import meta_order

__all__ = ["DAG_TPS"]


class DAG_TPS(MetaWorkflow):
    """A DAGonStar meta-workflow; ``max_threads`` is accepted and unused (agents have slots).

    Like a DAGonStar workflow, it keeps every task directory unless its ini says
    ``remove_dir = True``, and a failed run raises :class:`~dagon.TaskFailed`.
    """

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any] | None = None,
        config_file: str | os.PathLike[str] = "dagon.ini",
        max_threads: int = 10,
    ) -> None:
        super().__init__(name, config=config, config_file=config_file)
        self.max_threads = max_threads
        self.logger = logging.getLogger(f"dagon.workflow.{name}")
        self.workflow_id: str | int = 0

    def add_workflow(self, workflow: CoreWorkflow) -> None:
        super().add_workflow(workflow)
        set_dag_tps = getattr(workflow, "set_dag_tps", None)
        if set_dag_tps is not None:
            set_dag_tps(self)

    @property
    def tasks(self) -> list[Any]:
        """Every task of every member, in order."""
        found: list[Any] = []
        for wf in self.workflows:
            tasks = getattr(wf, "tasks", None)
            found.extend(tasks if isinstance(tasks, list) else list(wf))
        return found

    def find_task_by_name(self, workflow_name: str, task_name: str) -> Any:
        """The task ``task_name`` of member ``workflow_name`` (None if there is none)."""
        for wf in self.workflows:
            if wf.name == workflow_name and task_name in wf:
                find = getattr(wf, "find_task_by_name", None)
                return find(workflow_name, task_name) if find is not None else wf[task_name]
        return None

    def find_workflow_task(self, task_name: str) -> str | None:
        """The name of the first member that has a task ``task_name``."""
        for wf in self.workflows:
            if task_name in wf:
                return wf.name
        return None

    def Validate_WF(self) -> None:
        """Raise ValidationError if a reference names no member or task, or references form a cycle."""
        meta_order(self.workflows)

    def make_dependencies(self) -> list[CoreWorkflow]:
        """Infer each member's edges, then validate the references between them."""
        return super().make_dependencies()

    def as_json(self, json_format: str = "mw") -> dict[str, Any]:
        """DAGonStar's document: every member's tasks in one ``tasks`` mapping.

        Args:
            json_format: ``"mw"`` — commands as written; ``"wf"`` — references to other
                workflows rewritten as references of one workflow (``workflow:///task/path``).
        """
        if json_format not in ("mw", "wf"):
            raise ValueError(f"json_format must be 'mw' or 'wf', got {json_format!r}")
        tasks: dict[str, Any] = {}
        for task in self.tasks:
            doc = dict(task.as_json()) if hasattr(task, "as_json") else _native_doc(task)
            if json_format == "wf":
                doc["command"] = _one_workflow(doc["name"], doc["command"])
            tasks[doc["name"]] = doc
        return {"tasks": tasks, "name": self.name, "id": self.workflow_id}

    def _keep_scratch(self) -> bool:
        return not self.ini.remove_dir

    def _scratch_root(self) -> Path | None:
        """DAGonStar puts a member's task directories under that member's ``get_scratch_dir_base()``;
        one embedded agent serves the whole meta-workflow here, so all go under the first member's
        that has one (and every such member's ``get_scratch_dir_base()`` then says so)."""
        with_root = [wf for wf in members(self.workflows) if wf._scratch is not None]
        if not with_root:
            return super()._scratch_root()
        root = with_root[0]._scratch
        for wf in with_root:
            wf._scratch = root
        return root


def _native_doc(task: Task) -> dict[str, Any]:
    return {"name": task.name, "command": task.command, "native": task.to_dict()}


def _one_workflow(task: str, command: str) -> str:
    for ref in find_references(command, task=task):
        if ref.workflow:
            command = command.replace(ref.text, f"workflow:///{ref.task}/{ref.path}")
    return command
