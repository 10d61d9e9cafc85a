"""``dagon.Workflow``: the core model plus a blocking ``run()`` for scripts,
and the DAGonStar API (``add_task``, ``make_dependencies``, ``as_json`` …, see
:mod:`dagon._compat`) so DAGonStar scripts run unchanged.

Inside ``dagon run FILE.py`` the CLI installs a :class:`RunnerContext`, so the
script's own ``wf.run()`` calls get the CLI's broker, dry-run flag and live
progress without the script knowing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from dagon._client import connect
from dagon._compat import DagonStarAPI
from dagon._compat_types import StagerMover
from dagon._ini import DagonIni, load_ini
from dagon._plan import lookup_agents, plan_text
from dagon.core import RunResult, Task, ValidationError
from dagon.core import Workflow as _CoreWorkflow
from dagon.core._checks import missing_runtimes
from dagon.core._patterns import gather, scatter, sweep
from dagon.protocol import DagonError

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
    fetch_outputs: Path | None = None  # 'dagon run --fetch-outputs DIR': copy final outputs here


runner_context: ContextVar[RunnerContext | None] = ContextVar("dagon_runner_context", default=None)


class Workflow(DagonStarAPI, _CoreWorkflow):
    """A DAG of tasks (see :class:`dagon.core.Workflow`) that can also run itself.

    The native builder (``shell``, ``python``, ``map``, ``sweep`` …) and the
    DAGonStar API (``add_task``, ``make_dependencies``, ``as_json``, ``set_dry`` …)
    work on the same object.

    Args:
        name: workflow name (used by ``workflow://NAME/...`` references).
        config: DAGonStar configuration sections as a dict (instead of ``config_file``).
        config_file: a ``dagon.ini`` (read if it exists; see :mod:`dagon._ini`).
        max_threads: accepted for DAGonStar scripts; concurrency is the agents' slots.
        jsonload: a document from :meth:`as_json` (or a JSON file) to load the tasks from.
        checkpoint_file: a file recording which run this is (JSON, written at submission),
            so that ``run(resume_checkpoint_file=...)`` can resume it after a crash.
        configure_logging: apply the ini file's ``logging.config`` sections (off: dagon
            never reconfigures a script's logging behind its back).
    """

    def __init__(
        self,
        name: str,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        config_file: str | os.PathLike[str] = "dagon.ini",
        max_threads: int = 10,
        jsonload: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        checkpoint_file: str | None = None,
        *,
        configure_logging: bool = False,
    ) -> None:
        super().__init__(name)
        self.ini: DagonIni = load_ini(config, Path(config_file))
        self.max_threads = max_threads
        self.checkpoint_file = checkpoint_file
        self.dry = False
        self._dagon_tasks = {}
        self._dagonstar = config is not None or jsonload is not None
        self._data_mover = None
        self._stager_mover = StagerMover.NORMAL
        self._launched = None
        self._launch_result = []
        if configure_logging:
            self.ini.configure_logging()
        if jsonload is not None:
            self.load_json(jsonload if isinstance(jsonload, Mapping) else Path(jsonload))

    def get_dry(self) -> bool:
        """Whether ``run()`` only prints the plan (``set_dry(True)`` or ``dagon run --dry-run``)."""
        ctx = runner_context.get()
        return self.dry or (ctx is not None and (ctx.dry_run or ctx.capture))

    # -- parallel patterns (native API) ------------------------------------------------

    def map(
        self, name: str, command: str, over: str | Iterable[Any], *, after: Iterable[str | Task] = (), **options: Any
    ) -> Task | list[Task]:
        """Map ``command`` over items or over a producer's output files.

        ``over="workflow:///P/GLOB"``: dynamic — when ``P`` has succeeded, one task per
        file of its output matching ``GLOB`` (named ``NAME_STEM``), each with the glob
        reference in ``command`` narrowed to its file; returns the template, which
        dependents reference as ``workflow:///NAME/PATH`` to gather from every copy.
        ``over=[...]``: static — tasks ``NAME_0``, ``NAME_1`` … with ``{item}`` and
        ``{index}`` filled in; returns them.
        """
        if isinstance(over, str):
            if not over.startswith("workflow://"):
                raise ValidationError(
                    f"map {name!r}: over= is a workflow:// glob reference or a list of items, got {over!r}",
                    tasks=[name],
                )
            return self.add(Task(name=name, command=command, map_over=over, after=_task_names(after), **options))
        return scatter(self, name, command, over, after=after, **options)

    def sweep(
        self,
        name: str,
        command: str,
        params: Mapping[str, Iterable[Any]],
        *,
        after: Iterable[str | Task] = (),
        **options: Any,
    ) -> list[Task]:
        """A parameter sweep: one task per point of the cartesian product of ``params``."""
        return sweep(self, name, command, params, after=after, **options)

    def gather(
        self, name: str, command: str, over: Iterable[str | Task] | str | Task, path: str, **options: Any
    ) -> Task:
        """Reduce: ``{inputs}`` in ``command`` becomes the ``path`` of every task of ``over``
        (for a dynamic map, pass its template: every copy is gathered)."""
        producers = [over] if isinstance(over, str | Task) else list(over)
        return gather(self, name, command, producers, path, **options)

    def run(
        self,
        resume_checkpoint_file: str | None = None,
        *,
        broker: str | None = None,
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
            broker: MQTT URL; default ``$DAGON_BROKER``, else the embedded default.
            dry_run: validate and print the plan only; nothing runs, nothing is written
                (also ``set_dry(True)`` and ``dagon run --dry-run``).
            progress: show live progress (default: only under ``dagon run``).
            check: raise :class:`~dagon.core.TaskFailed` — naming each failed task with its
                exit code and stderr tail — if the run did not succeed. Default: on for
                DAGonStar-style workflows run as plain scripts, off otherwise.
            keep_scratch: keep every task directory (no garbage collection).

        Returns:
            The run's result, or None for a dry run (or under ``dagon submit``).
        """
        ctx = runner_context.get()
        if ctx is not None and ctx.capture:
            ctx.captured.append(self)
            return None
        if dry_run or self.dry or (ctx is not None and ctx.dry_run):
            where = broker or (ctx.broker if ctx is not None else None) or os.environ.get("DAGON_BROKER")
            agents, note = lookup_agents(where)
            sys.stdout.write(plan_text(self, broker=where, agents=agents, note=note) + "\n")
            if ctx is not None:
                ctx.planned += 1
            return None
        checkpoint = resume_checkpoint_file or self.checkpoint_file
        resume_run = read_checkpoint(Path(resume_checkpoint_file), self.name) if resume_checkpoint_file else None
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
        local = not (broker or os.environ.get("DAGON_BROKER"))
        scratch = self.ini.scratch_for_run() if local else None
        result = asyncio.run(
            _run(
                self,
                broker=broker,
                progress=show,
                home=home,
                scratch=scratch,
                slots=self.ini.threads,
                fetch_to=ctx.fetch_outputs if ctx is not None else None,
                # DAGonStar keeps every task directory unless its ini says remove_dir
                keep_scratch=keep_scratch or (self._dagonstar and not self.ini.remove_dir),
                resume_run=resume_run,
                checkpoint=Path(checkpoint) if checkpoint else None,
            )
        )
        if ctx is not None:
            ctx.results.append(result)
        self._absorb(result, local_scratch=local)
        if check or (check is None and self._dagonstar and ctx is None):
            self._raise_failures(result)
        return result


async def _run(
    workflow: Workflow,
    *,
    broker: str | None,
    progress: bool,
    home: Path | None,
    scratch: Path | None = None,
    slots: int | None = None,
    fetch_to: Path | None = None,
    keep_scratch: bool = False,
    resume_run: str | None = None,
    checkpoint: Path | None = None,
) -> RunResult:
    workflow.graph(external=True)  # fail on an invalid workflow before starting anything
    async with connect(
        broker, home=home, agent_scratch=scratch, agent_slots=slots, keep_scratch=keep_scratch
    ) as client:
        await _check_runtimes(client.coordinator, workflow)
        if resume_run is not None:
            handle = await client.resume(resume_run)
        else:
            handle = await client.submit(workflow)
        if checkpoint is not None:
            await asyncio.to_thread(write_checkpoint, checkpoint, handle.id, workflow.name, client.home)
        if not progress:
            result = await handle.wait()
        else:
            from dagon._progress import follow, summary_table

            result = await follow(handle, total=len(workflow), console=Console(stderr=True))
            Console().print(summary_table(result))
        if fetch_to is not None:
            await fetch_final_outputs(handle, workflow, result, fetch_to)
        return result


def read_checkpoint(path: Path, workflow: str) -> str | None:
    """The run a DAGonStar checkpoint file names (None: no file, or an empty one: start afresh)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DagonError(f"cannot read checkpoint file {path}: {exc}") from None
    if not text.strip():
        return None
    try:
        doc = json.loads(text)
        run, named = str(doc["run"]), str(doc.get("workflow", workflow))
    except (ValueError, KeyError, TypeError):
        raise DagonError(
            f"checkpoint file {path} was not written by dagon (expected JSON with a 'run' id);"
            " remove it to start afresh"
        ) from None
    if named != workflow:
        raise DagonError(f"checkpoint file {path} is of workflow {named!r}, not {workflow!r}; use another file")
    return run


def write_checkpoint(path: Path, run: str, workflow: str, home: Path) -> None:
    """Record which run to resume (atomically: a crash never leaves half a file)."""
    doc = {"run": run, "workflow": workflow, "home": str(home), "written_at": time.time()}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


async def fetch_final_outputs(handle: Any, workflow: _CoreWorkflow, result: RunResult, dest: Path) -> None:
    """Copy the outputs of the tasks no other task consumes into ``dest/<workflow>/<task>/``."""
    consumed = {d for deps in workflow.graph(external=True).deps.values() for d in deps}
    for name, outcome in result.tasks.items():
        if name in consumed or not outcome.ok or not outcome.outputs:
            continue
        for top in sorted({o.path.split("/", 1)[0] for o in outcome.outputs}):
            await handle.fetch(name, top, dest / workflow.name / name)


_AGENT_GRACE = 3.0  # seconds to wait for the broker's retained agent announcements


async def _check_runtimes(coordinator: Any, workflow: _CoreWorkflow) -> None:
    """Fail before submitting when a task's runtime is offered by no agent (SSH gets its own message)."""
    if coordinator is None:
        return
    if not coordinator.agents_online:
        try:
            async with asyncio.timeout(_AGENT_GRACE):
                await coordinator.wait_for_agents(1)
        except TimeoutError:
            logging.getLogger(__name__).info("no agent online yet; tasks wait for agents to connect")
            return
    missing = missing_runtimes(workflow, coordinator.engine.agents.values())
    if "ssh" in missing:
        raise ValidationError(
            "SSH execution is not available yet: task(s) "
            + ", ".join(missing["ssh"])
            + " use ip=/ssh_username/keypath (the 'ssh' runtime), which no agent offers;"
            " run them on an agent on that host instead (drop ip=)",
            tasks=missing["ssh"],
        )


def _task_names(items: Iterable[str | Task]) -> tuple[str, ...]:
    return tuple(item.name if isinstance(item, Task) else item for item in items)
