"""Running workflow scripts: ``dagon run``, ``dagon submit``, ``dagon cancel`` and ``dagon graph``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

import dagon
from dagon._interrupt import interrupted, until_interrupted
from dagon._remote import DEFAULT_ANSWER_TIMEOUT
from dagon._runner import RunnerContext, routed_on_broker
from dagon._script import defined_workflows, exec_script, run_script, submission_order
from dagon._ui._cli import add_ui_arguments, ui_settings
from dagon.cli._common import Subparsers, add_broker, add_insecure
from dagon.cli._settings import CliSettings
from dagon.core import Workflow as CoreWorkflow
from dagon.protocol import DagonError

__all__ = ["add_answer_timeout", "add_commands"]


def add_commands(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="run a workflow script with live progress")
    run.add_argument("file", type=Path, help="the workflow script (Python), run like `python FILE`")
    add_broker(run)
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    run.add_argument(
        "--fetch-outputs",
        type=Path,
        metavar="DIR",
        help="copy the outputs of the final tasks (those no task consumes) to DIR/WORKFLOW/TASK/",
    )
    add_insecure(run)
    add_ui_arguments(run)
    run.epilog = "Arguments for the script go after --: dagon run wf.py --broker URL -- --size 3 (its sys.argv[1:])."
    run.set_defaults(handler=_run)

    submit = sub.add_parser("submit", help="hand a workflow script to a standalone coordinator")
    submit.add_argument("file", type=Path, help="the workflow script whose workflows are submitted")
    add_broker(submit)
    submit.add_argument("--coordinator", default="auto", help="coordinator id (default: the online one)")
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    add_answer_timeout(submit)
    submit.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="with --wait: Ctrl-C cancels the run (default: Ctrl-C detaches, the run goes on)",
    )
    add_insecure(submit)
    submit.set_defaults(handler=_submit)

    cancel = sub.add_parser("cancel", help="cancel a run of a standalone coordinator (its running tasks are stopped)")
    cancel.add_argument("run", help="the run id (as `dagon submit` printed it, or from `dagon runs`)")
    add_broker(cancel)
    cancel.add_argument("--coordinator", default="auto", help="coordinator id (default: the online one)")
    add_answer_timeout(cancel)
    add_insecure(cancel)
    cancel.set_defaults(handler=_cancel)

    graph = sub.add_parser("graph", help="export a workflow script's graph (Mermaid, Graphviz DOT, CWL v1.2)")
    graph.add_argument("file", type=Path, help="the workflow script (nothing runs)")
    graph.add_argument(
        "--format", choices=("mermaid", "dot", "cwl"), default="mermaid", help="output format (default: mermaid)"
    )
    graph.add_argument("--workflow", help="only this workflow (the script may define several)")
    graph.add_argument("-o", "--output", type=Path, help="write to this file (default: stdout)")
    graph.set_defaults(handler=_graph)


def _run(args: argparse.Namespace, settings: CliSettings) -> int:
    ctx = RunnerContext(
        broker=settings.broker,
        dry_run=args.dry_run,
        progress=True,
        fetch_outputs=args.fetch_outputs,
        insecure=settings.insecure,  # reaches the Workflow.run() calls of the script too
        ui=ui_settings(args),  # --ui-port: the dashboard of the script's in-process coordinator
    )
    return run_script(args.file, args.args, ctx)  # like `python FILE.py` (see dagon._script)


def _submit(args: argparse.Namespace, settings: CliSettings) -> int:
    broker = settings.broker
    if broker is None:
        raise DagonError("dagon submit needs a broker with a coordinator: pass --broker URL or set DAGON_BROKER")
    ctx = RunnerContext(broker=broker, capture=True)
    namespace, status = exec_script(args.file, [], ctx)
    if status:
        return status  # the script failed (its traceback is printed)
    workflows = ctx.captured or defined_workflows(namespace, ctx)
    if not workflows:
        raise DagonError(f"{args.file} defines no dagon Workflow")
    # Producers first; references to workflows outside the script resolve to the coordinator's runs.
    workflows = submission_order(workflows, standalone=True)
    options = _SubmitOptions(args.coordinator, args.wait, args.answer_timeout, args.cancel_on_interrupt)
    return asyncio.run(_submit_all(broker, options, workflows, insecure=settings.insecure))


def add_answer_timeout(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--answer-timeout",
        type=_seconds,
        default=DEFAULT_ANSWER_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the coordinator's answer (default {DEFAULT_ANSWER_TIMEOUT:g})",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


@dataclass(frozen=True)
class _SubmitOptions:
    coordinator: str
    wait: bool
    answer_timeout: float
    cancel_on_interrupt: bool


async def _submit_all(broker: str, options: _SubmitOptions, workflows: list[CoreWorkflow], *, insecure: bool) -> int:
    from dagon._progress import follow, summary_table

    ok = True
    workflows = await routed_on_broker(workflows, broker)  # ip= tasks with no agent at that host: over SSH
    client_ = dagon.connect(
        broker, coordinator=options.coordinator, insecure=insecure, answer_timeout=options.answer_timeout
    )
    async with client_ as client:
        handles = []
        for wf in workflows:
            handle = await client.submit(wf)  # returns once accepted; raises with the reason if refused
            sys.stdout.write(f"{handle.id}\n")
            sys.stdout.flush()
            handles.append((handle, len(wf)))
        if options.wait:

            async def follow_all() -> bool:
                ok = True
                for handle, total in handles:
                    result = await follow(handle, total=total, console=Console(stderr=True))
                    Console().print(summary_table(result))
                    ok = ok and result.ok
                return ok

            outcome = await until_interrupted(follow_all())
            if outcome is None:  # Ctrl-C
                runs = [h.id for h, _ in handles]
                await interrupted(client, runs, cancel=options.cancel_on_interrupt, command="dagon submit")
                return 130
            ok = outcome
    return 0 if ok else 1


def _cancel(args: argparse.Namespace, settings: CliSettings) -> int:
    broker = settings.broker
    if broker is None:
        raise DagonError("dagon cancel needs the broker of the coordinator running the run: pass --broker URL")
    return asyncio.run(_cancel_run(broker, args, insecure=settings.insecure))


async def _cancel_run(broker: str, args: argparse.Namespace, *, insecure: bool) -> int:
    client_ = dagon.connect(broker, coordinator=args.coordinator, insecure=insecure, answer_timeout=args.answer_timeout)
    async with client_ as client:
        handle = await client.attach(args.run)
        await handle.cancel("cancelled with dagon cancel")  # raises with the reason if refused
        try:
            async with asyncio.timeout(args.answer_timeout):
                result = await handle.wait()
        except TimeoutError:
            sys.stdout.write(f"cancelling run {args.run}: its tasks are being stopped\n")
            return 0
    sys.stdout.write(f"run {args.run}: {result.state.value}\n")
    return 0


def _graph(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon._export import export

    ctx = RunnerContext(capture=True)  # the script's run() calls collect workflows; nothing runs
    with contextlib.redirect_stdout(sys.stderr):  # what the script prints must not mix with the graph
        namespace, status = exec_script(args.file, [], ctx)
    if status:
        return status
    workflows = ctx.captured or defined_workflows(namespace, ctx)
    if args.workflow:
        workflows = [wf for wf in workflows if wf.name == args.workflow]
    if not workflows:
        which = f" named {args.workflow!r}" if args.workflow else ""
        raise DagonError(f"{args.file} defines no dagon Workflow{which}")
    try:
        text = export(workflows, args.format)
    except ValueError as exc:
        raise DagonError(str(exc)) from None
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
