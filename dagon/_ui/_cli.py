"""The dashboard's command-line flags, shared by ``dagon coordinator`` and ``dagon run``."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from dagon._ui._server import Dashboard
from dagon._ui._token import TOKEN_FILE, load_or_create_token
from dagon.protocol import ConfigError

if TYPE_CHECKING:
    from dagon.core import Coordinator

__all__ = ["UiSettings", "add_ui_arguments", "serve_ui", "ui_settings"]


@dataclass(frozen=True, slots=True)
class UiSettings:
    """Where and how to serve the dashboard (from ``--ui-port``, ``--ui-host``, ``--ui-allow-control``)."""

    port: int
    host: str = "127.0.0.1"
    allow_control: bool = False


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ui-port",
        type=int,
        default=None,
        metavar="N",
        help="serve the live web dashboard on this port (0: any free port; default: no dashboard)",
    )
    parser.add_argument(
        "--ui-host", default="127.0.0.1", metavar="ADDR", help="address of the dashboard (default: loopback only)"
    )
    parser.add_argument(
        "--ui-allow-control", action="store_true", help="offer cancel and resume in the dashboard (default: read-only)"
    )


def ui_settings(args: argparse.Namespace) -> UiSettings | None:
    """The settings the flags ask for (``None``: no dashboard).

    Raises:
        ConfigError: ``--ui-allow-control`` or ``--ui-host`` without ``--ui-port``, or a bad port.
    """
    port = getattr(args, "ui_port", None)
    if port is None:
        if getattr(args, "ui_allow_control", False):
            raise ConfigError("--ui-allow-control needs --ui-port N (the dashboard is off without it)")
        if getattr(args, "ui_host", "127.0.0.1") != "127.0.0.1":
            raise ConfigError("--ui-host needs --ui-port N (the dashboard is off without it)")
        return None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--ui-port {port} is not a TCP port (1-65535, or 0 for any free one)")
    return UiSettings(port=port, host=args.ui_host, allow_control=bool(args.ui_allow_control))


@contextlib.asynccontextmanager
async def serve_ui(
    coordinator: Coordinator | None, settings: UiSettings | None, *, home: Path, out: TextIO
) -> AsyncIterator[Dashboard | None]:
    """The dashboard of ``coordinator`` while the block runs (``None`` without settings or coordinator).

    Prints the address with the token to ``out`` (the person starting the coordinator needs it
    once); the token itself lives in ``home/ui-token``.

    Raises:
        ConfigError: an unusable token file, or an address that cannot be bound.
    """
    if settings is None or coordinator is None:
        yield None
        return
    token = load_or_create_token(home)
    dashboard = Dashboard(
        coordinator, token=token, host=settings.host, port=settings.port, allow_control=settings.allow_control
    )
    async with dashboard:
        mode = "cancel/resume allowed" if dashboard.allow_control else "read-only"
        out.write(f"dashboard ({mode}): {dashboard.login_url}\n  (token in {home / TOKEN_FILE})\n")
        out.flush()
        yield dashboard
