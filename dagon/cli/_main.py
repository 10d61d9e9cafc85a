"""``dagon``: build the parser from the command modules, load the settings once, dispatch.

Exit codes: 0 success, 1 a workflow ran and failed, 2 bad usage (an unknown
option included), an error in the workflow script, invalid workflow or
unreachable service, 130 interrupted.

Arguments for a workflow script go after ``--`` (``dagon run wf.py --dry-run -- --size 3``):
everything before it is dagon's, and an option dagon does not know is refused
(:mod:`dagon.cli._parser`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rich.console import Console
from rich.markup import escape

import dagon
from dagon._interrupt import Interrupted
from dagon.cli import _cmd_deploy, _cmd_inspect, _cmd_keys, _cmd_logs, _cmd_run, _cmd_services, _cmd_watch
from dagon.cli._common import Handler
from dagon.cli._parser import DagonParser
from dagon.cli._settings import CliSettings
from dagon.protocol import DagonError

__all__ = ["main", "parser"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Services say what they serve on (INFO); one-shot commands only warn.
_SERVICE_COMMANDS = frozenset({"coordinator", "broker"})


def parser() -> argparse.ArgumentParser:
    """The ``dagon`` parser; each command carries its handler as ``handler``."""
    p = DagonParser(
        prog="dagon",
        description="Run workflows across the compute continuum.",
        epilog="`dagon COMMAND --help` describes a command. Arguments for a workflow script go after --:"
        " dagon run wf.py -- ARGS.",
    )
    p.add_argument("--version", action="version", version=f"dagon {dagon.__version__}")
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level (default: $DAGON_LOG_LEVEL, else INFO for coordinator and broker, WARNING otherwise)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    for group in (_cmd_run, _cmd_services, _cmd_keys, _cmd_inspect, _cmd_logs, _cmd_watch, _cmd_deploy):
        group.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``dagon`` command; returns its exit code."""
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # Flags may follow the script (`dagon run wf.py --broker URL`); the script's own
    # arguments go after `--`. Anything else dagon does not know is refused.
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    if args.command == "run":
        args.args = argv[cut + 1 :]  # the script's sys.argv[1:]
    elif cut < len(argv):
        args = p.parse_args(argv)  # `--` means what argparse says: the rest are positionals
        args.args = []
    else:
        args.args = []
    logging.basicConfig(
        level=getattr(logging, _log_level(args)), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler: Handler = args.handler
    try:
        return handler(args, CliSettings.load(args, os.environ))
    except DagonError as exc:
        # escaped: "pip install 'dagon-engine[mongo]'" must not be read as rich markup
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as exc:
        # once runs were submitted, dagon._interrupt has said what became of them
        if not isinstance(exc, Interrupted):
            Console(stderr=True).print("[yellow]interrupted[/]", highlight=False, soft_wrap=True)
        return 130


def _log_level(args: argparse.Namespace) -> str:
    """``--log-level``, else ``$DAGON_LOG_LEVEL``, else INFO for services and WARNING for the rest."""
    if args.log_level:
        return str(args.log_level)
    level = os.environ.get("DAGON_LOG_LEVEL", "").upper()
    if level in LOG_LEVELS:
        return level
    return "INFO" if args.command in _SERVICE_COMMANDS else "WARNING"
