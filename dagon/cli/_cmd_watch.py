"""Following a run live (``dagon watch``) and reporting on it afterwards (``dagon report``)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from dagon.cli._common import Subparsers, add_broker
from dagon.cli._settings import CliSettings, client_id
from dagon.core._config import run_store_path
from dagon.protocol import DagonError, topics
from dagon.protocol.transport import MqttTransport, redact_url

__all__ = ["add_commands"]


def add_commands(sub: Subparsers) -> None:
    watch = sub.add_parser("watch", help="follow a run live: tasks by state, running tasks, agents' CPU/memory/power")
    watch.add_argument("run", help="the run id (printed by `dagon submit`; `dagon runs` lists them)")
    add_broker(watch)
    watch.add_argument(
        "--wait", type=float, default=10.0, metavar="SECONDS",
        help="give up when no status of the run arrives within SECONDS (default: 10)",
    )  # fmt: skip
    watch.set_defaults(handler=_watch)

    report = sub.add_parser("report", help="write an HTML report of a run (Gantt chart per agent, energy per task)")
    report.add_argument("run", help="the run id (`dagon runs` lists them)")
    report.add_argument("-o", "--output", type=Path, help="HTML file to write (default: report-RUN.html)")
    report.set_defaults(handler=_report)


def _watch(args: argparse.Namespace, settings: CliSettings) -> int:
    broker = settings.require_broker("dagon watch")
    try:
        return asyncio.run(_follow(settings, broker, args.run, wait=args.wait))
    except KeyboardInterrupt:
        return 130  # the run goes on: watching is read-only


async def _follow(settings: CliSettings, broker: str, run: str, *, wait: float) -> int:
    from dagon._watch import WatchState, watch

    transport = MqttTransport(
        broker, client_id=client_id("dagon-watch"), protocol=settings.mqtt_protocol, auth=settings.mqtt_auth()
    )
    async with transport:
        await transport.subscribe(
            topics.run_status(run),
            topics.run_events(run),
            topics.run_task_results(run),
            topics.all_agent_telemetry_json(),
        )

        async def messages() -> AsyncIterator[tuple[str, bytes]]:
            async for msg in transport.messages():
                yield msg.topic, msg.payload

        tty = sys.stdout.isatty()
        width = shutil.get_terminal_size((100, 24)).columns if tty else 200
        try:
            return await watch(messages(), WatchState(run), sys.stdout, tty=tty, width=width, first_status_timeout=wait)
        except TimeoutError as exc:
            raise DagonError(f"{exc} on {redact_url(broker)}: check the run id (`dagon runs`) and the broker") from None


def _report(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon._report import load_report, render_html

    report = load_report(run_store_path(settings.home), args.run)
    output: Path = args.output or Path(f"report-{args.run}.html")
    try:
        output.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise DagonError(f"cannot write the report to {output}: {exc}") from exc
    sys.stdout.write(f"{output}\n")
    return 0
