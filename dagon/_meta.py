"""Meta-workflows in the facade: run several workflows that reference each other.

``MetaWorkflow`` (DAGonStar: ``dagon.dag_tps.DAG_TPS``) validates the set with
:func:`dagon.core._meta.meta_order` — cross-workflow cycles are rejected before
anything runs — and submits the workflows, producers first, to one coordinator,
where a consumer's task waits for the producing workflow's task.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from dagon._client import connect
from dagon._ini import DagonIni, load_ini
from dagon._plan import lookup_agents, plan_text
from dagon._workflow import Workflow, _check_runtimes, runner_context
from dagon.core import RunResult, TaskFailed
from dagon.core import Workflow as CoreWorkflow
from dagon.core._meta import meta_order

__all__ = ["MetaWorkflow", "run_together"]


class MetaWorkflow:
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
        config: Mapping[str, Mapping[str, Any]] | None = None,
        config_file: str | os.PathLike[str] = "dagon.ini",
    ) -> None:
        self.name = name
        self.workflows: list[CoreWorkflow] = list(workflows)
        self.ini: DagonIni = load_ini(config, Path(config_file))
        self.dry = False

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
        self.dry = bool(dry)
        for wf in self.workflows:
            if isinstance(wf, Workflow):
                wf.set_dry(dry)

    def get_dry(self) -> bool:
        ctx = runner_context.get()
        return self.dry or (ctx is not None and (ctx.dry_run or ctx.capture))

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workflows": [wf.as_json() if isinstance(wf, Workflow) else wf.to_dict() for wf in self.workflows],
        }

    def run(self, *, broker: str | None = None, check: bool | None = None) -> dict[str, RunResult] | None:
        """Run every member to its end on one coordinator; results by workflow name.

        Raises:
            ValidationError: a member is invalid, a reference names no member or task,
                or references between workflows form a cycle — before anything runs.
            TaskFailed: (``check``, default on outside ``dagon run``) a task failed; the
                message names each with its exit code and stderr tail.
        """
        ordered = self.make_dependencies()
        ctx = runner_context.get()
        if ctx is not None and ctx.capture:
            ctx.captured.extend(ordered)
            return None
        if self.get_dry():
            where = broker or (ctx.broker if ctx is not None else None) or os.environ.get("DAGON_BROKER")
            agents, note = lookup_agents(where)
            for wf in ordered:
                sys.stdout.write(plan_text(wf, broker=where, agents=agents, note=note) + "\n")
            if ctx is not None:
                ctx.planned += 1
            return None
        broker = broker or (ctx.broker if ctx is not None else None)
        local = not (broker or os.environ.get("DAGON_BROKER"))
        results = run_together(
            ordered,
            broker=broker,
            home=ctx.home if ctx is not None else None,
            scratch=self.ini.scratch_for_run() if local else None,
            slots=self.ini.threads,
            progress=ctx is not None and ctx.progress,
        )
        if ctx is not None:
            ctx.results.extend(results.values())
        for wf in ordered:
            if isinstance(wf, Workflow):
                wf._absorb(results[wf.name], local_scratch=local)
        if check or (check is None and ctx is None):
            failed: dict[str, str] = {}
            from dagon._compat import failure_report

            for name, result in results.items():
                failed.update({f"{name}/{task}": why for task, why in failure_report(result).items()})
            if failed:
                raise TaskFailed(self.name, failed)
        return results


def run_together(
    workflows: list[CoreWorkflow],
    *,
    broker: str | None = None,
    home: Path | None = None,
    scratch: Path | None = None,
    slots: int | None = None,
    progress: bool = False,
) -> dict[str, RunResult]:
    """Submit ``workflows`` (producers first) to one coordinator and wait for all (blocking)."""
    return asyncio.run(_run_together(workflows, broker, home, scratch, slots, progress))


async def _run_together(
    workflows: list[CoreWorkflow],
    broker: str | None,
    home: Path | None,
    scratch: Path | None,
    slots: int | None,
    progress: bool,
) -> dict[str, RunResult]:
    async with connect(broker, home=home, agent_scratch=scratch, agent_slots=slots) as client:
        for wf in workflows:
            await _check_runtimes(client.coordinator, wf)
        handles = [await client.submit(wf) for wf in workflows]
        results = {h.workflow: await h.wait() for h in handles}
    if progress:
        from dagon._progress import summary_table

        for result in results.values():
            Console().print(summary_table(result))
    return results
