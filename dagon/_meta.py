"""Meta-workflows in the facade: run several workflows that reference each other.

``MetaWorkflow`` (DAGonStar: ``dagon.dag_tps.DAG_TPS``) hands its members to the one
run path (:func:`dagon._runner.run_blocking`): the set is validated first —
cross-workflow cycles are rejected before anything runs — and the workflows are
submitted, producers first, to one coordinator, where a consumer's task waits for
the producing workflow's task.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dagon._ini import DagonIni, load_ini
from dagon._runner import DryRun, RunOptions, raise_failures, run_blocking
from dagon._workflow import NativeWorkflow
from dagon.core import RunResult
from dagon.core import Workflow as CoreWorkflow
from dagon.core._meta_order import meta_order

__all__ = ["MetaWorkflow"]


class MetaWorkflow(DryRun):
    """Workflows run together on one coordinator (``workflow://Other/task/path`` links them).

    Args:
        name: the meta-workflow's name (for messages).
        workflows: initial members (more with :meth:`add_workflow`).
        config, config_file: ``dagon.ini`` settings for the embedded agent (as for ``Workflow``).
    """

    def __init__(
        self,
        name: str,
        workflows: Iterable[CoreWorkflow] = (),
        *,
        config: Mapping[str, Any] | None = None,
        config_file: str | os.PathLike[str] = "dagon.ini",
    ) -> None:
        self.name = name
        self.workflows: list[CoreWorkflow] = []
        self.ini: DagonIni = load_ini(config, Path(config_file))
        self.dry = False
        for wf in workflows:
            self.add_workflow(wf)

    def add_workflow(self, workflow: CoreWorkflow) -> None:
        self.workflows.append(workflow)

    def make_dependencies(self) -> list[CoreWorkflow]:
        """Validate every member and the references between them; returns the submission order."""
        for wf in self.workflows:
            make = getattr(wf, "make_dependencies", None)
            if make is not None:
                make()
        return meta_order(self.workflows)

    def set_dry(self, dry: bool) -> None:
        super().set_dry(dry)
        for wf in self.workflows:
            if isinstance(wf, DryRun):
                wf.set_dry(dry)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workflows": [wf.as_json() if hasattr(wf, "as_json") else wf.to_dict() for wf in self.workflows],
        }

    def run(
        self, *, broker: str | None = None, coordinator: str | None = None, check: bool | None = None
    ) -> dict[str, RunResult] | None:
        """Run every member to its end on one coordinator; results by workflow name.

        Raises:
            ValidationError: a member is invalid, a reference names no member or task,
                or references between workflows form a cycle — before anything runs.
            TaskFailed: (``check``, default on) a task failed; the message names each
                as ``workflow/task`` with its exit code and stderr tail.
        """
        options = RunOptions.resolve(
            broker=broker,
            coordinator=coordinator,
            dry_run=self.dry,
            check=check,
            check_default=True,
            keep_scratch=self._keep_scratch(),
            scratch=self._scratch_root(),
        )
        results = run_blocking(self.workflows, options)
        if results is None:
            return None
        for wf in self.workflows:
            if isinstance(wf, NativeWorkflow):
                wf._after_run(results[wf.name], options)
        if options.check:
            raise_failures(self.name, results)
        return results

    def _keep_scratch(self) -> bool:
        """Whether no task directory is garbage-collected (DAG_TPS: unless the ini says ``remove_dir``)."""
        return False

    def _scratch_root(self) -> Path | None:
        """The embedded agent's scratch root for this run (the ini's ``scratch_dir_base[/run_base]``)."""
        return self.ini.scratch_for_run()
