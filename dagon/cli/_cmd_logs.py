"""A task's captured output: ``dagon logs RUN TASK [--attempt N] [--stderr]`` (see :mod:`dagon._logs`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from dagon.cli._cmd_run import add_answer_timeout
from dagon.cli._common import Subparsers, add_broker, retained
from dagon.cli._settings import CliSettings
from dagon.core._config import run_store_path
from dagon.protocol import SCHEMA_RUN_STATUS, SCHEMA_TASK_RESULT, ProtocolError, decode_public, topics

__all__ = ["add_commands"]


def add_commands(sub: Subparsers) -> None:
    logs = sub.add_parser(
        "logs",
        help="print a task's stdout (or stderr) from its agent's scratch or the coordinator's copy",
        description="Print what a task attempt wrote to stdout (or, with --stderr, stderr): from its scratch"
        " directory on this machine, else from its agent's data server (needs --broker: with this home's"
        " coordinator key, or a client key the coordinator trusts, `dagon keys trust-client`), else the last"
        " 4 KiB of stderr the coordinator kept (said so on stderr).",
    )
    logs.add_argument("run", help="the run id (`dagon runs` lists them)")
    logs.add_argument("task", help="the task's name")
    logs.add_argument("--attempt", type=int, metavar="N", help="this attempt (default: the last one)")
    logs.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
    add_broker(logs)
    logs.add_argument("--coordinator", default="auto", help="coordinator id to ask (default: the online one)")
    add_answer_timeout(logs)
    logs.set_defaults(handler=_logs)


def _public(payloads: list[tuple[str, bytes]], schema: str) -> list[dict[str, Any]]:
    docs = []
    for _topic, payload in payloads:
        with contextlib.suppress(ProtocolError):
            docs.append(decode_public(payload, schema=schema))
    return docs


def _logs(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon._logs import ask_coordinator, direct, locate, write_log

    stream = "stderr" if args.stderr else "stdout"
    broker = settings.broker
    results: dict[str, dict[str, Any]] = {}
    run_known = False
    statuses: list[tuple[str, bytes]] | None = None
    if broker is not None:
        found = asyncio.run(retained(settings, broker, topics.run_task_results(args.run)))
        results = {str(d.get("task")): d for d in _public(found, SCHEMA_TASK_RESULT) if d.get("run") == args.run}
        status = asyncio.run(retained(settings, broker, topics.run_status(args.run)))
        run_known = bool(_public(status, SCHEMA_RUN_STATUS))
    attempt = locate(
        args.run, args.task, args.attempt, store=run_store_path(settings.home), results=results, run_known=run_known
    )
    download = None
    if broker is not None and not (attempt.workdir and (Path(attempt.workdir) / ".dagon" / stream).is_file()):
        statuses = asyncio.run(retained(settings, broker, topics.all_agent_status()))
        if attempt.agent and not direct(attempt, statuses, settings.home):  # a client machine: ask the coordinator
            where = asyncio.run(
                ask_coordinator(
                    attempt, stream, broker=broker, coordinator=args.coordinator, home=settings.home,
                    insecure=settings.insecure, answer_timeout=args.answer_timeout,
                )
            )  # fmt: skip
            download = lambda _found, _stream: where  # noqa: E731
    how = asyncio.run(
        write_log(attempt, stream, sys.stdout.buffer, home=settings.home, statuses=statuses, download=download)
    )
    if how == "tail":
        sys.stderr.write(
            "note: this is the stderr tail the coordinator kept (at most its last 4 KiB), not the whole log: "
            + "; ".join(attempt.notes)
            + "\n"
        )
    return 0
