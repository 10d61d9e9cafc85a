"""``dagon.Workflow``: the core model plus a blocking ``run()`` for scripts.

Inside ``dagon run FILE.py`` the CLI installs a :class:`RunnerContext`, so the
script's own ``wf.run()`` calls get the CLI's broker, dry-run flag and live
progress without the script knowing.
"""

from __future__ import annotations

import asyncio
import sys
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from dagon._client import connect
from dagon.core import RunResult
from dagon.core import Workflow as _CoreWorkflow

__all__ = ["RunnerContext", "Workflow", "plan_text", "runner_context"]


@dataclass
class RunnerContext:
    """Settings the ``dagon`` CLI hands to ``Workflow.run()`` calls in a script."""

    broker: str | None = None
    dry_run: bool = False
    progress: bool = True
    capture: bool = False  # 'dagon submit': collect workflows instead of running them
    home: Path | None = None
    results: list[RunResult] = field(default_factory=list)
    captured: list[_CoreWorkflow] = field(default_factory=list)
    planned: int = 0


runner_context: ContextVar[RunnerContext | None] = ContextVar("dagon_runner_context", default=None)


def plan_text(workflow: _CoreWorkflow) -> str:
    """What a run would do, computed without any side effect."""
    graph = workflow.graph()
    lines = [f"workflow {workflow.name!r}: {len(graph.order)} task(s), valid"]
    for name in graph.order:
        task = workflow[name]
        deps = ", ".join(sorted(graph.deps[name])) or "-"
        where = f"agent {task.agent}" if task.agent else "any agent"
        if task.labels:
            where += " with " + ",".join(f"{k}={v}" for k, v in task.labels.items())
        lines.append(f"  {name}  [{task.runtime}] after: {deps}; runs on {where} (runtime {task.runtime})")
        for ref in graph.refs_of(name):
            lines.append(f"      stages {ref.path!r} from {ref.task} ({ref.text})")
    return "\n".join(lines)


class Workflow(_CoreWorkflow):
    """A DAG of tasks (see :class:`dagon.core.Workflow`) that can also run itself."""

    def run(
        self,
        *,
        broker: str | None = None,
        dry_run: bool = False,
        progress: bool | None = None,
        check: bool = False,
    ) -> RunResult | None:
        """Run to completion and return the result (blocking; for scripts).

        Args:
            broker: MQTT URL; default ``$DAGON_BROKER``, else the embedded default.
            dry_run: validate and print the plan only; nothing runs, nothing is written.
            progress: show live progress (default: only under ``dagon run``).
            check: raise :class:`~dagon.core.TaskFailed` if the run did not succeed.

        Returns:
            The run's result, or None for a dry run (or under ``dagon submit``).
        """
        ctx = runner_context.get()
        if ctx is not None and ctx.capture:
            ctx.captured.append(self)
            return None
        if dry_run or (ctx is not None and ctx.dry_run):
            sys.stdout.write(plan_text(self) + "\n")
            if ctx is not None:
                ctx.planned += 1
            return None
        broker = broker or (ctx.broker if ctx is not None else None)
        show = progress if progress is not None else ctx is not None and ctx.progress
        home = ctx.home if ctx is not None else None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Workflow.run() blocks and cannot be called from a running event loop;"
                " use 'async with dagon.connect() as client: await (await client.submit(wf)).wait()'"
            )
        result = asyncio.run(_run(self, broker=broker, progress=show, home=home))
        if ctx is not None:
            ctx.results.append(result)
        if check:
            result.raise_for_status()
        return result


async def _run(workflow: Workflow, *, broker: str | None, progress: bool, home: Path | None) -> RunResult:
    workflow.graph()  # fail on an invalid workflow before starting anything
    async with connect(broker, home=home) as client:
        handle = await client.submit(workflow)
        if not progress:
            return await handle.wait()
        from dagon._progress import follow, summary_table

        console = Console(stderr=True)
        result = await follow(handle, total=len(workflow), console=console)
        Console().print(summary_table(result))
        return result
