"""``dagon deploy ssh://user@host[:port]``: install, enroll and start an agent on a remote host.

The work is :mod:`dagon._deploy`'s; this module only wires it into the ``dagon`` parser.
"""

from __future__ import annotations

import argparse
import os
import sys

from dagon import _deploy
from dagon.cli._common import Subparsers
from dagon.cli._settings import CliSettings

__all__ = ["add_commands"]


def add_commands(sub: Subparsers) -> None:
    deploy = sub.add_parser(
        "deploy", help="install, enroll and start dagon-agent on a host over SSH (idempotent)",
        description="Push this dagon's wheel over SFTP into a venv on the host, enroll the agent with this"
        " coordinator's key, start it (or install a systemd service) and wait until it is online.",
    )  # fmt: skip
    _deploy.add_arguments(deploy)
    deploy.set_defaults(handler=_deploy_command)


def _deploy_command(args: argparse.Namespace, settings: CliSettings) -> int:
    sys.stdout.write(_deploy.run_command(args, home=settings.home, broker=settings.broker, env=os.environ) + "\n")
    return 0
