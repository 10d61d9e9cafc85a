"""The one blocking run path of the facade: ``Workflow.run``, ``MetaWorkflow.run`` and ``dagon run``.

* :class:`RunOptions` ``.resolve(...)`` works out *how* to run, once: argument, then
  the ``dagon`` CLI's :class:`RunnerContext`, then the environment (``DAGON_BROKER``,
  ``DAGON_COORDINATOR``), then the default (the embedded broker and agent).
* :func:`run_blocking` runs one workflow or several linked ones: it validates the set
  once (before any broker starts), waits for agents so the coordinator's runtime check
  means something, submits producers first, waits, and returns the results.

Inside ``dagon run FILE.py`` the CLI installs a :class:`RunnerContext`, so the
script's own ``run()`` calls get the CLI's broker, dry-run flag and live progress
without the script knowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from dagon._client import Client, RunHandle, connect
from dagon._interrupt import Interrupted, interrupted_run, until_interrupted
from dagon._plan import agents_on, lookup_agents, plan_text
from dagon._settings import broker_from_env
from dagon._ui._cli import UiSettings, serve_ui
from dagon.core import RunResult, TaskFailed, TaskState, ValidationError
from dagon.core import Workflow as CoreWorkflow
from dagon.core._meta_order import meta_order
from dagon.protocol import Capabilities, ConfigError, DagonError

__all__ = [
    "DryRun",
    "RunOptions",
    "RunnerContext",
    "checkpoint_scratch",
    "failure_report",
    "raise_failures",
    "read_checkpoint",
    "routed_on_broker",
    "run_blocking",
    "runner_context",
    "submission_order",
]

log = logging.getLogger(__name__)

_AGENT_GRACE = 3.0  # seconds to wait for the broker's retained agent announcements


@dataclass
class RunnerContext:
    """Settings the ``dagon`` CLI hands to the ``run()`` calls of a script it runs."""

    broker: str | None = None
    coordinator: str | None = None
    dry_run: bool = False
    progress: bool = True
    capture: bool = False  # 'dagon submit' / 'dagon graph': collect workflows instead of running them
    home: Path | None = None
    results: list[RunResult] = field(default_factory=list)
    captured: list[CoreWorkflow] = field(default_factory=list)
    created: list[CoreWorkflow] = field(default_factory=list)  # every dagon.Workflow the script built
    attempted: int = 0  # run() calls the script made, whatever became of them
    planned: int = 0
    fetch_outputs: Path | None = None  # 'dagon run --fetch-outputs DIR': copy final outputs here
    insecure: bool | None = None  # 'dagon run --insecure' (None: the client's default, $DAGON_INSECURE)
    ui: UiSettings | None = None  # 'dagon run --ui-port N': serve the dashboard of the in-process coordinator
    # Failed runs raise where they would under plain `python FILE.py` (see dagon._script.run_script).
    like_python: bool = False


runner_context: ContextVar[RunnerContext | None] = ContextVar("dagon_runner_context", default=None)


class DryRun:
    """``set_dry``/``get_dry``, defined once for workflows and meta-workflows."""

    dry: bool = False

    def set_dry(self, dry: bool) -> None:
        """Dry run: ``run()`` validates and prints the plan, and nothing else happens."""
        self.dry = bool(dry)

    def get_dry(self) -> bool:
        """Whether ``run()`` only prints the plan (``set_dry(True)``, ``dagon run --dry-run``, ``dagon graph``)."""
        ctx = runner_context.get()
        return self.dry or (ctx is not None and (ctx.dry_run or ctx.capture))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How one ``run()`` call runs (see :meth:`resolve`).

    Attributes:
        broker: MQTT URL (None: the embedded broker and agent).
        coordinator: a standalone coordinator's id or ``"auto"`` (None: one in this process).
        dry_run: print the plan only.
        capture: hand the workflows to the CLI instead of running them.
        progress: live progress and a summary table on the terminal.
        check: raise :class:`~dagon.core.TaskFailed` when a task did not succeed.
        keep_scratch: garbage-collect no task directory.
        home: the client's home (None: ``$DAGON_HOME``).
        scratch: the embedded agent's scratch root (a ``dagon.ini``'s ``scratch_dir_base[/run_base]``),
            whose task directories are then named as DAGonStar names them (``<epoch ms>-<task>``).
        fetch_to: copy the final outputs here afterwards.
        insecure: neither sign nor verify (None: the client's default, ``$DAGON_INSECURE``).
        resume_run: resume this run instead of submitting afresh (single workflow).
        checkpoint: a file to record the run id in (DAGonStar's ``checkpoint_file``).
        ui: serve the live dashboard of the coordinator in this process (``dagon run --ui-port``).
    """

    broker: str | None = None
    coordinator: str | None = None
    dry_run: bool = False
    capture: bool = False
    progress: bool = False
    check: bool = False
    keep_scratch: bool = False
    home: Path | None = None
    scratch: Path | None = None
    fetch_to: Path | None = None
    resume_run: str | None = None
    checkpoint: Path | None = None
    insecure: bool | None = None
    ui: UiSettings | None = None

    @property
    def local_scratch(self) -> bool:
        """Whether task directories are on this machine (the embedded agent's)."""
        return self.broker is None

    @classmethod
    def resolve(
        cls,
        *,
        broker: str | None = None,
        coordinator: str | None = None,
        dry_run: bool = False,
        progress: bool | None = None,
        check: bool | None = None,
        check_default: bool = False,
        keep_scratch: bool = False,
        scratch: Path | None = None,
        resume_run: str | None = None,
        checkpoint: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunOptions:
        """Argument, then the CLI's context, then the environment, then the default.

        Args:
            check: raise on failure; None: ``check_default`` (the caller's convention —
                on for DAGonStar-style workflows and meta-workflows, like the original).
            scratch: the embedded agent's scratch root (a ``dagon.ini``'s
                ``scratch_dir_base[/run_base]``; ignored with a broker: agents have their own).

        Raises:
            ConfigError: ``DAGON_COORDINATOR`` without a broker.
        """
        env = os.environ if env is None else env
        ctx = runner_context.get()
        broker = broker_from_env(broker or (ctx.broker if ctx is not None else None), env)
        coordinator = coordinator or (ctx.coordinator if ctx is not None else None) or env.get("DAGON_COORDINATOR")
        if coordinator and broker is None:
            raise ConfigError(
                f"a standalone coordinator ({coordinator!r}, from DAGON_COORDINATOR or coordinator=) is reached"
                " through a broker: set DAGON_BROKER=mqtt://HOST:PORT as well"
            )
        return cls(
            broker=broker,
            coordinator=coordinator or None,
            dry_run=dry_run or (ctx is not None and ctx.dry_run),
            capture=ctx is not None and ctx.capture,
            progress=progress if progress is not None else ctx is not None and ctx.progress,
            check=(check_default and (ctx is None or ctx.like_python)) if check is None else check,
            keep_scratch=keep_scratch,
            home=ctx.home if ctx is not None else None,
            scratch=scratch if broker is None else None,
            fetch_to=ctx.fetch_outputs if ctx is not None else None,
            resume_run=resume_run,
            checkpoint=checkpoint,
            insecure=ctx.insecure if ctx is not None else None,
            ui=ctx.ui if ctx is not None else None,
        )


_OUTSIDE = (
    "this process does not run. A coordinator in this process (the embedded default, or DAGON_BROKER"
    " alone) knows only this process's runs, so it cannot wait for a workflow that another script runs."
    " Build both workflows in one script (DAG_TPS / dagon.MetaWorkflow), or start a standalone coordinator"
    " ('dagon coordinator --broker URL') and run every script with DAGON_BROKER=URL DAGON_COORDINATOR=auto"
)


def submission_order(workflows: Sequence[CoreWorkflow], *, standalone: bool) -> list[CoreWorkflow]:
    """Validate ``workflows`` (once) and return them producers first.

    References to workflows outside the set are resolved by a standalone coordinator
    against the runs it holds (another process's run, e.g. DAGonStar's
    ``WF1-…``/``WF2-…`` pair); a coordinator in this process knows only this process's
    runs, so they are refused here with what to do instead.
    """
    return meta_order(workflows, others=standalone, outside=_OUTSIDE)


def run_blocking(workflows: Sequence[CoreWorkflow], options: RunOptions) -> dict[str, RunResult] | None:
    """Run ``workflows`` to their end (producers first) and return the results by workflow name.

    Returns None for a dry run (the plan is printed) and under ``dagon submit``/``dagon graph``
    (the workflows are handed to the CLI). Raises ValidationError before anything starts if a
    workflow, or a reference between them, is invalid.
    """
    ctx = runner_context.get()
    if ctx is not None:
        ctx.attempted += 1
    # Captured workflows go to a standalone coordinator ('dagon submit') or nowhere ('dagon graph').
    ordered = submission_order(workflows, standalone=options.coordinator is not None or options.capture)
    if options.capture:
        assert ctx is not None
        ctx.captured.extend(ordered)
        return None
    if options.dry_run:
        agents, note = lookup_agents(options.broker)
        for wf in ordered:
            sys.stdout.write(plan_text(wf, broker=options.broker, agents=agents, note=note) + "\n")
        if ctx is not None:
            ctx.planned += 1
        return None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "run() blocks and cannot be called from a running event loop;"
            " use 'async with dagon.connect() as client: await (await client.submit(wf)).wait()'"
        )
    results = asyncio.run(_run(ordered, options))
    if ctx is not None:
        ctx.results.extend(results.values())
    return results


async def _run(workflows: list[CoreWorkflow], options: RunOptions) -> dict[str, RunResult]:
    client_ = connect(
        options.broker,
        coordinator=options.coordinator,
        home=options.home,
        agent_scratch=options.scratch,
        agent_scratch_layout="run" if options.scratch is None else "dagonstar",
        keep_scratch=options.keep_scratch,
        insecure=options.insecure,
    )
    async with client_ as client, serve_ui(client.coordinator, options.ui, home=client.home, out=sys.stderr):
        await _wait_for_agents(client)
        wanted = frozenset(task.host for wf in workflows for task in wf if task.host)
        if wanted:
            hosts = await _agent_hosts(client, options, wanted)
            workflows = [_routed(wf, hosts) for wf in workflows]
        handles: list[tuple[RunHandle, CoreWorkflow]] = []
        for wf in workflows:
            if options.resume_run is not None:
                handle = await client.resume(options.resume_run)
                handle.workflow = handle.workflow or wf.name
            else:
                handle = await _submit(client, wf)
            if options.checkpoint is not None:
                await asyncio.to_thread(
                    write_checkpoint, options.checkpoint, handle.id, wf.name, client.home, options.scratch
                )
            handles.append((handle, wf))
        followed = await until_interrupted(_follow(handles, progress=options.progress))
        if followed is None:  # Ctrl-C: say what becomes of the runs (dagon._interrupt)
            await interrupted_run(client, [h.id for h, _ in handles])
            raise Interrupted
        results = followed
        if options.progress:
            from dagon._progress import summary_table

            for result in results.values():
                Console().print(summary_table(result))
        if options.fetch_to is not None:
            for handle, wf in handles:
                await fetch_final_outputs(handle, wf, results[wf.name], options.fetch_to)
        return results


async def _follow(handles: list[tuple[RunHandle, CoreWorkflow]], *, progress: bool) -> dict[str, RunResult]:
    results: dict[str, RunResult] = {}
    if progress and len(handles) == 1:
        from dagon._progress import follow

        handle, wf = handles[0]
        results[wf.name] = await follow(handle, total=len(wf), console=Console(stderr=True))
    else:
        for handle, wf in handles:
            results[wf.name] = await handle.wait()
    return results


async def _wait_for_agents(client: Client) -> None:
    """Give the broker's retained agent announcements a moment, so that the coordinator's
    runtime and placement checks see the agents (with none online, runs wait for agents to
    connect): an announce counts once its agent answered the coordinator's challenge, so wait
    for the first one and for those still answering, at most ``_AGENT_GRACE`` seconds in all."""
    coordinator = client.coordinator
    if coordinator is None:
        return
    try:
        async with asyncio.timeout(_AGENT_GRACE):
            await coordinator.wait_for_agents(1)
            await asyncio.sleep(0.05)  # announces retained beside the first one arrive with it
            while coordinator.agents_answering:  # one more online, or the grace ends (a dead one's announce)
                await coordinator.wait_for_agents(coordinator.agents_online + 1)
    except TimeoutError:
        if not coordinator.agents_online:
            log.info("no agent online yet; tasks wait for agents to connect")


async def _agent_hosts(client: Client, options: RunOptions, wanted: frozenset[str]) -> frozenset[str]:
    """The addresses and host names the online agents announce (where ``Task.host`` tasks can go);
    an embedded coordinator gives agents still connecting ``_AGENT_GRACE`` seconds to announce
    the ``wanted`` hosts before their tasks are handed to SSH."""
    coordinator = client.coordinator
    if coordinator is None:
        assert options.broker is not None
        return await _hosts_on(options.broker)  # a standalone coordinator's agents

    def online() -> frozenset[str]:
        return _hosts(a.capabilities for a in coordinator.engine.agents.values() if a.online)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_AGENT_GRACE):
            while not wanted <= online():
                await coordinator.wait_for_agents(coordinator.agents_online + 1)
    return online()


def _hosts(found: Iterable[Capabilities]) -> frozenset[str]:
    """Every address and host name the agents with capabilities ``found`` announce."""
    return frozenset(name for caps in found for name in (*caps.addresses, caps.hostname))


async def _hosts_on(broker: str) -> frozenset[str]:
    return _hosts(caps for _, caps in await agents_on(broker))


async def routed_on_broker(workflows: list[CoreWorkflow], broker: str) -> list[CoreWorkflow]:
    """``workflows`` with their ``ip=`` tasks for hosts no agent on ``broker`` is at handed to SSH
    (what ``run()`` does; ``dagon submit`` needs it too)."""
    if not any(task.host for wf in workflows for task in wf):
        return workflows
    hosts = await _hosts_on(broker)
    return [_routed(wf, hosts) for wf in workflows]


def _routed(workflow: CoreWorkflow, hosts: frozenset[str]) -> CoreWorkflow:
    """``workflow`` with its tasks for hosts no agent is at handed to SSH, where it knows how (DAGonStar's ``ip=``)."""
    route = getattr(workflow, "_routed", None)
    return route(hosts) if route is not None else workflow


async def _submit(client: Client, workflow: CoreWorkflow) -> RunHandle:
    try:
        return await client.submit(workflow)
    except ValidationError as exc:
        ssh = [t for t in workflow if t.runtime == "ssh" and t.name in exc.tasks]
        if not ssh:
            raise
        hosts = sorted({str(t.runtime_options.get("host", "")) for t in ssh})
        raise ValidationError(
            f"task(s) {', '.join(t.name for t in ssh)} have ip={'/'.join(hosts)}: no online agent announces that"
            " address and no agent offers the 'ssh' runtime. Start dagon-agent on that host (it announces its"
            " addresses; add others with --addresses), or give an agent --runtimes ssh (DAGON_RUNTIMES=ssh for"
            " the embedded one) to run them over SSH, or drop ip=",
            tasks=[t.name for t in ssh],
        ) from exc


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


def raise_failures(name: str, results: Mapping[str, RunResult]) -> None:
    """Raise TaskFailed naming each task that did not succeed (``WF/task`` for several workflows)."""
    failed: dict[str, str] = {}
    for workflow, result in results.items():
        if result.ok:
            continue
        prefix = f"{workflow}/" if len(results) > 1 else ""
        report = failure_report(result) or {"run": result.cause}
        for task, why in report.items():
            log.error("task %s%s: %s", prefix, task, why)
            failed[prefix + task] = why
    if failed:
        raise TaskFailed(name, failed)


def read_checkpoint(path: Path, workflow: str) -> str | None:
    """The run a DAGonStar checkpoint file names (None: no file, or an empty one: start afresh)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DagonError(f"cannot read checkpoint file {path}: {exc}") from exc
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


def checkpoint_scratch(path: Path) -> Path | None:
    """The scratch directory a checkpoint file recorded (DAGonStar's ``_scratch_dir``: a resumed
    run's remaining tasks go where the first run's went), None if it recorded none."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    found = doc.get("scratch_dir") if isinstance(doc, dict) else None
    return Path(found) if isinstance(found, str) and found else None


def write_checkpoint(path: Path, run: str, workflow: str, home: Path, scratch: Path | None = None) -> None:
    """Record which run to resume, and where its task directories are (atomically: a crash never
    leaves half a file)."""
    doc: dict[str, Any] = {"run": run, "workflow": workflow, "home": str(home), "written_at": time.time()}
    if scratch is not None:
        doc["scratch_dir"] = str(scratch)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


async def fetch_final_outputs(handle: Any, workflow: CoreWorkflow, result: RunResult, dest: Path) -> None:
    """Copy the outputs of the tasks no other task consumes into ``dest/<workflow>/<task>/``."""
    consumed = {d for deps in workflow.graph(external=True).deps.values() for d in deps}
    for name, outcome in result.tasks.items():
        if name in consumed or not outcome.ok or not outcome.outputs:
            continue
        for top in sorted({o.path.split("/", 1)[0] for o in outcome.outputs}):
            await handle.fetch(name, top, dest / workflow.name / name)
