"""Inspecting and acting on runs and agents: ``runs``, ``status``, ``resume``, ``gc`` and ``agents``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import dagon
from dagon.cli._common import Subparsers, add_broker, add_insecure, add_json, retained, wide_console
from dagon.cli._settings import CliSettings
from dagon.core._attempts import past_attempts
from dagon.core._config import run_store_path
from dagon.protocol import SCHEMA_RUN_STATUS, DagonError, ProtocolError, decode_public, topics

__all__ = ["add_commands"]

log = logging.getLogger("dagon.cli")


def add_commands(sub: Subparsers) -> None:
    runs = sub.add_parser("runs", help="list the runs recorded in $DAGON_HOME's run store")
    runs.add_argument("--limit", type=int, default=20, help="most recent N runs (default: 20)")
    add_json(runs)
    runs.set_defaults(handler=_runs)

    status = sub.add_parser("status", help="show a run")
    status.add_argument("run", help="the run id (`dagon runs` lists them)")
    add_broker(status)
    add_json(status)
    status.set_defaults(handler=_status)

    resume = sub.add_parser(
        "resume", help="run again what did not succeed in a run (interrupted, failed or cancelled), keeping the rest"
    )
    resume.add_argument("run", help="the run id (`dagon runs` lists them)")
    add_broker(resume)
    resume.add_argument(
        "--coordinator", help="have this standalone coordinator resume a run of its store (default: this process)"
    )
    add_insecure(resume)
    resume.set_defaults(handler=_resume)

    gc = sub.add_parser("gc", help="remove leftovers of finished runs from the agents' scratch roots")
    add_broker(gc)
    add_insecure(gc)
    gc.add_argument("runs", nargs="*", help="only these runs (default: every finished run of $DAGON_HOME's store)")
    gc.add_argument("--id", default="main", help="the coordinator id whose store and key to use (default: main)")
    gc.set_defaults(handler=_gc)

    agents = sub.add_parser(
        "agents",
        help="list online agents and their capabilities; `dagon agents approve ID` enrols one",
        description="Without arguments: list the agents on the broker — online ones a coordinator admits, and"
        " those waiting for approval (not admitted). `approve ID`: enrol agent ID with the key it announced, after"
        " you compared its fingerprint with `dagon-agent key` on its machine.",
    )
    add_broker(agents)
    agents.add_argument("action", nargs="?", choices=["approve"], help="approve: enrol agent ID")
    agents.add_argument("agent", nargs="?", help="the agent id to approve")
    agents.add_argument("--yes", action="store_true", help="approve without asking (compare the fingerprint first)")
    add_json(agents)
    agents.add_argument("--all", action="store_true", help="include offline agents")
    agents.set_defaults(handler=_agents)


def _resume(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon._progress import follow, summary_table

    broker = settings.broker
    if args.coordinator and broker is None:
        raise DagonError("resuming on a standalone coordinator needs its broker: pass --broker URL or set DAGON_BROKER")

    async def resume() -> int:
        async with dagon.connect(broker, coordinator=args.coordinator, insecure=settings.insecure) as client:
            handle = await client.resume(args.run)
            sys.stderr.write(f"resuming run {handle.id}\n")
            total = len(client.coordinator.engine.run(handle.id).tasks) if client.coordinator is not None else 0
            result = await follow(handle, total=total, console=Console(stderr=True))
            Console().print(summary_table(result))
            return 0 if result.ok else 1

    return asyncio.run(resume())


def _status(args: argparse.Namespace, settings: CliSettings) -> int:
    broker = settings.broker
    doc: dict[str, Any] | None = None
    if broker is not None:
        for _topic, payload in asyncio.run(retained(settings, broker, topics.run_status(args.run))):
            with contextlib.suppress(ProtocolError):
                doc = decode_public(payload, schema=SCHEMA_RUN_STATUS)
    stored = _status_from_store(run_store_path(settings.home), args.run)
    if doc is None:
        doc = stored
    elif stored is not None:  # the coordinator's own machine: its store has every task's history
        doc["task_list"] = stored["task_list"]
    if doc is None:
        raise DagonError(f"no run {args.run!r} found" + (" on the broker" if broker else f" in {settings.home}"))
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    console = Console()
    console.print(f"run [bold]{doc['run']}[/] ({doc.get('workflow', '?')}): [bold]{doc['state']}[/]")
    if doc.get("cause"):
        console.print(f"  {doc['cause']}")
    counts = doc.get("counts") or {}
    console.print("  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    peaks = doc.get("scratch_peak") or {}
    if peaks:
        console.print("  peak scratch (task outputs): " + ", ".join(f"{a} {n:,} B" for a, n in sorted(peaks.items())))
    listed = doc.get("task_list")
    if listed is None:  # from the broker: the tasks that ran more than once (the latest retried)
        listed = doc.get("retried") or []
        if listed:
            console.print("  retried tasks:")
    for task in listed:
        console.print(f"  {task['name']}: {task['state']} (attempt {task.get('attempt', '?')}) {task.get('cause', '')}")
        for past in task.get("retries", []):  # earlier attempts, and why they did not count
            where = f" on {past['agent']}" if past.get("agent") else ""
            console.print(f"    retried: attempt {past['attempt']}{where}: {past['cause']}")
    hidden = int(doc.get("retried_tasks") or 0) - len(listed)
    if "task_list" not in doc and hidden > 0:
        console.print(
            f"  … and {hidden} more retried task(s): each one's result ({topics.run_task_results(doc['run'])})"
            " lists its retries once it ended, or run `dagon status` where the coordinator's DAGON_HOME is"
        )
    return 0


def _runs(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon.core._store import RunStore

    path = run_store_path(settings.home)
    if not path.exists():
        raise DagonError(f"no run store in {settings.home} (set DAGON_HOME to the coordinator's home)")
    store = RunStore(path)
    try:
        records = store.list_runs(limit=max(1, args.limit))
    finally:
        store.close()
    if args.json:
        rows = [
            {"run": r.id, "workflow": r.workflow, "state": r.state, "cause": r.cause,
             "submitted_at": r.submitted_at, "finished_at": r.finished_at}
            for r in records
        ]  # fmt: skip
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    table = Table(title=f"{len(records)} most recent run(s) in {path}")
    # A run id is what a person copies into `dagon status`: never cut, never wrapped; the others fold.
    table.add_column("run", no_wrap=True, min_width=max((len(r.id) for r in records), default=3))
    table.add_column("state", no_wrap=True)
    for col in ("workflow", "submitted", "took", "cause"):
        table.add_column(col, overflow="fold")
    for r in records:
        took = f"{r.finished_at - r.submitted_at:.1f} s" if r.finished_at else ""
        submitted = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.submitted_at))
        table.add_row(r.id, r.state, r.workflow, submitted, took, r.cause)
    wide_console().print(table)
    return 0


def _status_from_store(path: Path, run: str) -> dict[str, Any] | None:
    from dagon.core._store import RunStore

    if not path.exists():
        return None
    store = RunStore(path)
    try:
        record = store.get_run(run)
        if record is None:
            return None
        tasks = store.tasks(run)
        retried = past_attempts(store.transitions(run))
    finally:
        store.close()
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.state] = counts.get(t.state, 0) + 1
    return {
        "schema": SCHEMA_RUN_STATUS,
        "run": record.id,
        "workflow": record.workflow,
        "state": record.state,
        "cause": record.cause,
        "counts": counts,
        "submitted_at": record.submitted_at,
        "finished_at": record.finished_at,
        "task_list": [
            {
                "name": t.name, "state": t.state, "attempt": t.attempt, "agent": t.agent, "cause": t.cause,
                "retries": [dataclasses.asdict(past) for past in retried.get(t.name, [])],
            }
            for t in tasks
        ],
    }  # fmt: skip


def _gc(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon._gc import finished_runs, send_gc
    from dagon.protocol import RunId

    broker = settings.require_broker("dagon gc")
    home = settings.home
    finished = finished_runs(home)
    if args.runs:
        unknown = sorted(set(args.runs) - set(finished))
        if unknown:
            raise DagonError(
                f"run(s) {', '.join(unknown)} are not finished runs of the store in {home}: run `dagon gc` where"
                " the coordinator's DAGON_HOME is, and only for finished runs"
            )
        finished = [RunId(r) for r in args.runs]
    found = asyncio.run(retained(settings, broker, topics.all_agent_status()))
    agents = asyncio.run(
        send_gc(
            broker, home, finished, found,
            coordinator_id=args.id, insecure=settings.insecure,
            protocol=settings.mqtt_protocol, auth=settings.mqtt_auth(),
        )
    )  # fmt: skip
    sys.stdout.write(f"asked {len(agents)} agent(s) to remove the scratch of {len(finished)} finished run(s)\n")
    return 0


def _approve(args: argparse.Namespace, statuses: list[tuple[str, bytes]], settings: CliSettings) -> int:
    from dagon._approve import candidate, enroll_candidate
    from dagon._keys import coordinator_trust

    if not args.agent:
        raise DagonError("say which agent: dagon agents approve ID")
    found = candidate(args.agent, statuses)
    sys.stdout.write(f"agent {found.agent} on {found.hostname!r}\n  key fingerprint {found.fingerprint}\n")
    if not args.yes:
        if not sys.stdin.isatty():
            raise DagonError(
                "not a terminal: compare the fingerprint with `dagon-agent key`, then run again with --yes"
            )
        answer = input("Admit this agent? Compare with `dagon-agent key` on its machine. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            sys.stdout.write("not approved\n")
            return 1
    pins = enroll_candidate(settings.home, found, coordinator_trust(settings.home).pinned(found.agent))
    sys.stdout.write(f"agent {found.agent} enrolled in {pins}\n")
    return 0


def _agents(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon._agentlist import agent_rows

    broker = settings.require_broker("dagon agents")
    statuses = asyncio.run(retained(settings, broker, topics.all_agent_status()))
    if args.action == "approve":
        return _approve(args, statuses, settings)
    documents = asyncio.run(retained(settings, broker, topics.all_coordinator_agents()))
    coordinators = asyncio.run(retained(settings, broker, topics.all_coordinator_status()))
    rows = [{"id": r["agent"], **r} for r in agent_rows(statuses, documents, coordinators, settings.home)]
    if not args.all:  # offline agents only with --all; agents waiting for approval always
        rows = [r for r in rows if r["online"] or not r["admitted"]]
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    online = [r for r in rows if r["online"]]
    pending = [r for r in rows if not r["admitted"]]
    title = f"{len(online)} agent(s) online" + (f", {len(pending)} not admitted" if pending else "")
    table = Table(title=title)
    # Ids are never cut; every other cell wraps (runtimes and labels at their commas) rather than lose text.
    table.add_column("id", no_wrap=True, min_width=max((len(r["id"]) for r in rows), default=2))
    for col in ("state", "host", "arch", "cpus", "memory", "free/slots", "runtimes", "labels"):
        table.add_column(col, overflow="fold")
    for r in rows:
        state = "[green]online[/]" if r["online"] else "[red]offline[/]" if r["admitted"] else "[yellow]not admitted[/]"
        if "hostname" not in r:
            table.add_row(r["agent"], state, "", "", "", "", "", "", r.get("reason", ""))
            continue
        free = "" if r.get("free_slots") is None else f"{r['free_slots']}/"
        labels = ", ".join(f"{k}={v}" for k, v in r["labels"].items())
        table.add_row(
            r["agent"], state, r["hostname"], r["arch"], str(r["cpus"]), f"{r['memory'] / 2**30:.1f} GiB",
            f"{free}{r['slots']}", ", ".join(r["runtimes"]), labels,
        )  # fmt: skip
    console = wide_console()
    console.print(table)
    for r in pending:
        console.print(
            f"{r['agent']} is not admitted (key {r['fingerprint']}): {r['reason']}",
            style="yellow", highlight=False, soft_wrap=True, markup=False,
        )  # fmt: skip
    return 0
