"""The agent's side of :mod:`dagon.agent._keeper`: take over from a previous life, start the keeper.

At start (before the agent announces itself) whatever the previous process with this
id and home left running is killed; then this life's ledger is opened and the keeper
process started. At a clean stop the agent has reaped every task itself, closes the
keeper's pipe (the keeper then kills what may still carry the life token — a daemon a
task started with ``setsid``) and removes the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from dagon.agent import _keeper
from dagon.agent._keeper import LIFE_ENV, Ledger, take_over

__all__ = ["LIFE_ENV", "Lifeline"]

log = logging.getLogger(__name__)

KEEPER_EXIT_WAIT = 5.0


class Lifeline:
    """Ledger + keeper of one agent life.

    Args:
        path: the ledger file (``<home>/tasks-<agent id>.pids``).
        agent: the agent id (for log messages).
        keeper: start the keeper process (off only for tests of the ledger itself).
    """

    def __init__(self, path: Path, *, agent: str, keeper: bool = True) -> None:
        self.token = os.urandom(8).hex()
        self.ledger = Ledger(path, self.token)
        self._agent = agent
        self._use_keeper = keeper
        self._keeper: subprocess.Popen[bytes] | None = None

    @property
    def keeper_pid(self) -> int | None:
        return self._keeper.pid if self._keeper is not None else None

    async def start(self) -> None:
        """Kill the previous life's leftovers, open this life's ledger, start the keeper."""
        killed, tasks = await asyncio.to_thread(take_over, self.ledger.path)
        if killed:
            log.warning(
                "agent %s: killed %d process(es) its previous run left running (tasks %s); they run again only if"
                " their coordinator assigns them again",
                self._agent, killed, ", ".join(tasks) or "unknown",
            )  # fmt: skip
        await asyncio.to_thread(self.ledger.open)
        if self._use_keeper:
            self._keeper = await asyncio.to_thread(self._spawn_keeper)
            log.info("agent %s: keeper pid %d kills its tasks' processes if it dies", self._agent, self._keeper.pid)

    def _spawn_keeper(self) -> subprocess.Popen[bytes]:
        # -I -S: no site-packages, no environment; the keeper needs the standard library only.
        # Its own session: a Ctrl-C in the agent's terminal does not reach it.
        return subprocess.Popen(
            [sys.executable, "-I", "-S", _keeper.__file__, str(self.ledger.path), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    async def close(self) -> None:
        """Clean stop (every task already reaped): let the keeper sweep and end, drop the ledger."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            assert keeper.stdin is not None
            with contextlib.suppress(OSError):
                keeper.stdin.close()
            try:
                await asyncio.to_thread(keeper.wait, KEEPER_EXIT_WAIT)
            except subprocess.TimeoutExpired:
                log.warning("agent %s: its keeper (pid %d) did not end; killing it", self._agent, keeper.pid)
                keeper.kill()
                await asyncio.to_thread(keeper.wait)
        await asyncio.to_thread(self.ledger.close, remove=True)
