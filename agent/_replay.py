"""The ids of accepted commands and the revoked data grants, kept on disk until they are too
old to matter.

An agent refuses a signed command it accepted before (a replay). Held only in memory,
that memory ends with the process: a command captured on the broker and published
again after the agent restarted would run again. Each accepted id is therefore written
here (one small SQLite insert, on the event loop, before the command is acted on: ~30 µs
in WAL mode) and read back at start; rows older than the freshness window are deleted,
because the timestamp check refuses such messages by itself. Memory and disk are bounded
by the command rate times the window.

Revoked grants (``RevokeGrants``: the consumer attempt they were minted for ended) are
kept the same way, until the latest of them would have expired anyway, so a restarted
agent does not honour them again.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from pathlib import Path

from dagon.agent._private import private_dir, private_file
from dagon.protocol import Grant, ProtocolError, TaskRef

__all__ = ["ReplayRecord"]

log = logging.getLogger(__name__)


class ReplayRecord:
    """``<home>/replay-<agent>.sqlite``: message id → timestamp of every accepted command, and
    consumer attempt → until when its data grants are revoked.

    Args:
        path: the file (created 0600).
        window: the freshness window in seconds; older rows are dropped.
    """

    def __init__(self, path: Path, *, window: float) -> None:
        self.path = path
        self.window = window
        self._db: sqlite3.Connection | None = None
        self.floor = 0.0
        self._revoked: dict[tuple[str, str, int], float] = {}  # consumer attempt -> until

    def open(self) -> list[tuple[str, float]]:
        """Open (or create) the file; returns the ids still inside the window.

        A record that cannot be read is moved aside and replaced; until the window has
        passed, nothing older than now is accepted (:attr:`floor`), since the lost record
        could have vouched for it.
        """
        private_dir(self.path.parent)
        private_file(self.path)
        try:
            return self._load()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(self.path.name + f".broken-{int(time.time())}")
            log.error("replay record %s is unreadable (%s); moved to %s, starting a new one", self.path, exc, aside)
            self.close()
            self.path.replace(aside)
            private_file(self.path)
            self.floor = time.time()
            return self._load()

    def _load(self) -> list[tuple[str, float]]:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, ts REAL NOT NULL)")
        db.execute("DELETE FROM seen WHERE ts < ?", (time.time() - 2 * self.window,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS revoked (run TEXT, task TEXT, attempt INTEGER, until REAL NOT NULL,"
            " PRIMARY KEY (run, task, attempt))"
        )
        db.execute("DELETE FROM revoked WHERE until < ?", (time.time(),))
        rows = db.execute("SELECT run, task, attempt, until FROM revoked")
        self._revoked = {(str(r), str(t), int(a)): float(u) for r, t, a, u in rows}
        return [(str(i), float(ts)) for i, ts in db.execute("SELECT id, ts FROM seen")]

    def add(self, nonce: str, ts: float) -> None:
        """Record one accepted id (called by the replay guard before the command is acted on)."""
        if self._db is None:
            return
        self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?)", (nonce, ts))

    def revoke(self, attempts: tuple[TaskRef, ...], until: float) -> None:
        """Refuse the data grants of these consumer attempts until ``until``."""
        rows = [(ref.run, ref.task, ref.attempt, until) for ref in attempts]
        for run, task, attempt, _ in rows:
            key = (run, task, attempt)
            self._revoked[key] = max(until, self._revoked.get(key, until))
        if self._db is not None:
            self._db.executemany(
                "INSERT INTO revoked VALUES (?, ?, ?, ?)"
                " ON CONFLICT (run, task, attempt) DO UPDATE SET until = max(until, excluded.until)",
                rows,
            )

    def admit_grant(self, grant: Grant) -> Grant:
        """``grant``, unless the attempt it was minted for ended (raises ProtocolError ``revoked``)."""
        if grant.consumer is not None and self._revoked.get(grant.consumer, 0.0) >= time.time():
            run, task, attempt = grant.consumer
            raise ProtocolError(
                f"data token for {grant.task}/{grant.path} was revoked: {run}/{task} attempt {attempt}, which it was"
                " issued for, has ended",
                reason="revoked",
            )
        return grant

    def prune(self) -> None:
        """Drop ids older than the window (they are refused by their timestamp anyway), and
        revocations of grants that have expired by now."""
        now = time.time()
        self._revoked = {key: until for key, until in self._revoked.items() if until >= now}
        if self._db is not None:
            self._db.execute("DELETE FROM seen WHERE ts < ?", (now - 2 * self.window,))
            self._db.execute("DELETE FROM revoked WHERE until < ?", (now,))

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
