"""Pieces several ``dagon`` commands share: common options, signal handling, retained messages.

Scripts are run by :mod:`dagon._script` (like ``python FILE.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from rich.console import Console

from dagon.cli._settings import CliSettings, client_id
from dagon.protocol.transport import MqttTransport

__all__ = [
    "Handler", "Subparsers", "add_broker", "add_insecure", "add_json", "retained", "serve", "unless_stopped",
    "wide_console",
]  # fmt: skip

Handler = Callable[[argparse.Namespace, CliSettings], int]
"""A command: its parsed arguments and the invocation's settings in, an exit code out."""

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""Where each command module adds its commands (``parser.add_subparsers()``)."""


def add_broker(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--broker", help="mqtt:// or mqtts:// URL (default: $DAGON_BROKER)")


def add_json(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")


def wide_console() -> Console:
    """The console for tables: on a terminal, as wide as it is (cells wrap, nothing is cut); piped, as
    wide as a row needs — an id or a label is never shortened with an ellipsis for a program to read."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000)


def add_insecure(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="neither sign nor verify messages (development only; default: $DAGON_INSECURE)",
    )


async def serve(start: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``start(stop)``; SIGINT and SIGTERM set ``stop``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await start(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def retained(
    settings: CliSettings, broker: str, filter_: str, *, quiet: float = 0.5, limit: float = 3.0
) -> list[tuple[str, bytes]]:
    """Collect the retained messages matching ``filter_`` (until quiet for ``quiet`` s)."""
    found: dict[str, bytes] = {}  # one per topic: an agent re-announcing meanwhile is listed once
    transport = MqttTransport(
        broker, client_id=client_id("dagon-cli"), protocol=settings.mqtt_protocol, auth=settings.mqtt_auth()
    )
    async with transport:
        await transport.subscribe(filter_)
        deadline = time.monotonic() + limit
        messages = transport.messages()
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(quiet):
                    msg = await anext(messages)
            except TimeoutError:
                break
            if msg.retain:  # the broker's snapshot, not live messages arriving meanwhile
                found[msg.topic] = msg.payload
    return [(topic, payload) for topic, payload in found.items() if payload]


async def unless_stopped(stop: asyncio.Event, step: Awaitable[object]) -> bool:
    """Await ``step`` (e.g. connecting to a broker that is not up yet) unless ``stop`` is set first:
    then ``step`` is cancelled and False returned, so a service waiting at start still obeys SIGTERM."""
    doing = asyncio.ensure_future(step)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([doing, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if doing.done():
        doing.result()  # its error, if it failed
        return True
    doing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doing
    return False
