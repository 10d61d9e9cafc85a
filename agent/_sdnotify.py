"""systemd's service notification protocol, natively: readiness, status, watchdog, stopping.

The protocol (``sd_notify(3)``) is one datagram of ``KEY=VALUE`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` — a path, or ``@name`` for an abstract
socket. No library is needed and none is used, so the agent stays pure Python on
every board (a Raspberry Pi included).

What the agent sends (see ``dagon.cli._agent``):

* ``READY=1`` once it is connected to its broker and has announced itself (the unit is
  ``Type=notify``, so ``systemctl start`` returns only then);
* ``STATUS=…`` — running tasks and broker state, shown by ``systemctl status``;
* ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` **from the event loop**: a loop that is
  blocked or wedged stops the pings, and systemd restarts the agent (``WatchdogSec=``);
* ``STOPPING=1`` when a graceful shutdown starts;
* while it waits for a broker that is not up yet (a device that boots starts its services in any
  order), ``EXTEND_TIMEOUT_USEC=`` every :data:`EXTEND_EVERY` seconds from the event loop, so the
  unit's ``TimeoutStartSec=`` does not have systemd kill an agent that is doing exactly what it should
  (its own capped reconnect backoff); a loop that stalls stops extending and the start times out.

``$NOTIFY_SOCKET`` is removed from the environment once read, so tasks (child
processes) never inherit it; the unit also sets ``NotifyAccess=main``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Final

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger(__name__)

MAX_STATUS: Final = 1024  # characters of a STATUS= line (systemd shows one line)
EXTEND_EVERY: Final = 30.0  # seconds between start-timeout extensions while the broker is awaited
EXTEND_BY: Final = 90.0  # seconds each extension grants (three missed extensions: the start times out)


def watchdog_interval(env: MutableMapping[str, str]) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or None without a watchdog.

    ``$WATCHDOG_PID``, when set, must be this process (systemd sets it for the main process only).
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


class Notifier:
    """Sends ``sd_notify`` datagrams; does nothing when not started by systemd.

    Args:
        address: the ``$NOTIFY_SOCKET`` value (``/run/systemd/notify`` or ``@abstract``);
            ``None`` or empty disables the notifier.
        watchdog: seconds between watchdog pings (see :func:`watchdog_interval`), None for none.
    """

    def __init__(self, address: str | None, *, watchdog: float | None = None) -> None:
        self.address = address or ""
        self.watchdog = watchdog
        self.sent = 0
        self._sock: socket.socket | None = None
        self._warned = False
        if self.address and not self.address.startswith(("/", "@")):
            log.warning("ignoring NOTIFY_SOCKET=%r: only unix socket paths and @abstract names are supported",
                        self.address)  # fmt: skip
            self.address = ""

    @classmethod
    def from_environ(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """Read (and remove) ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` from ``env``."""
        env = os.environ if env is None else env
        notifier = cls(env.get("NOTIFY_SOCKET"), watchdog=watchdog_interval(env))
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)  # tasks must not talk to systemd in the agent's name
        return notifier

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def _target(self) -> str | bytes:
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        return self.address

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; never raises, never blocks.

        Returns:
            Whether the datagram was handed to the socket.
        """
        if not self.enabled:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._target())
        except OSError as exc:
            if not self._warned:  # a vanished socket must not flood the log every ping
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status[:MAX_STATUS]}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text[:MAX_STATUS]}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status[:MAX_STATUS]}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def starting_loop(
        self, status: str, *, every: float = EXTEND_EVERY, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """Until cancelled (once started), extend the start timeout every ``every`` seconds with
        ``status``. Nothing is sent during the first ``every`` seconds: a quick start sends READY only."""
        if not self.enabled:
            return
        while True:
            await sleep(every)
            self.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY * 1_000_000)}", f"STATUS={status[:MAX_STATUS]}")

    async def watchdog_loop(
        self,
        status: Callable[[], str],
        *,
        status_every: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Ping the watchdog (when one is configured) and refresh ``STATUS=`` until cancelled.

        Runs as a task of the event loop it watches: while that loop is blocked, nothing is sent.
        ``sleep`` is the pause between passes (tests pass their own to see the period).
        """
        if not self.enabled:
            return
        step = min(self.watchdog, status_every) if self.watchdog else status_every
        last_status = ""
        since_status = status_every  # the first pass sends the status
        while True:
            if self.watchdog:
                self.notify("WATCHDOG=1")
            if since_status >= status_every:
                try:
                    text = status()
                except Exception:  # a status line is never worth a restart
                    log.exception("building the systemd status line failed")
                    text = ""
                if text and text != last_status:
                    self.status(text)
                    last_status = text
                since_status = 0.0
            await sleep(step)
            since_status += step
