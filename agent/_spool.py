"""The agent's durable spool: results until their coordinator has stored them, telemetry while offline.

Every :class:`TaskResult` is written here *before* it is handed to the transport, and
leaves only when a ``ResultsStored`` naming its attempt arrives. A result therefore
survives a broker that is down, a connection that is cut and the agent process itself
being killed: the agent that starts again with the same state finds it and sends it
again (see :mod:`dagon.agent._redeliver`).

Storage is one SQLite file in WAL mode with ``synchronous=NORMAL`` (a commit costs no
fsync; a power cut may lose the last commits, never corrupt the file). One transaction
per outbox flush, so a burst of results costs one commit: a small one commits inline
(tens of microseconds, cheaper than the hop to a thread on every result's latency), a
large one in a worker thread; WAL checkpoints (the part that writes the database file
and syncs) never happen inside a commit but every second in a worker thread.
An in-memory index mirrors the stored results for the agent's fast questions (do I
hold this attempt? what do I hold?).

Telemetry samples that could not be published go to a second table, a bounded ring
(oldest dropped first, with a warning): they are delivered in order once the broker is
back, also after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from dagon.agent._private import private_dir, private_file
from dagon.protocol import AgentId, Codec, DagonError, ProtocolError, TaskRef, TaskResult, TasksFinished

__all__ = ["ResultSpool", "SpoolEntry"]

log = logging.getLogger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY,
    coordinator TEXT NOT NULL,
    run TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    spooled_at REAL NOT NULL,
    payload BLOB NOT NULL,
    UNIQUE (run, task, attempt)
);
CREATE TABLE IF NOT EXISTS telemetry (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
"""
_T = TypeVar("_T")
INLINE_ROWS: Final = 16  # transactions up to this many rows commit on the event loop (~20-50 µs)
CHECKPOINT_EVERY: Final = 1.0  # seconds between WAL checkpoints (when something was written)
RECENT: Final = 10_000  # acknowledged attempts remembered, so a redelivered assignment is not run again


@dataclass(slots=True, eq=False)
class SpoolEntry:
    """One unacknowledged result (the in-memory mirror of a row).

    Attributes:
        seq: spool order (results are re-sent in this order).
        coordinator: where the result goes (the assignment's ``reply_to``).
        result: the result itself.
        size: bytes it takes in the spool.
        spooled_at: wall-clock time it was spooled.
        due: monotonic time it is sent again unless acknowledged before.
        backoff: the wait after the next resend (doubles up to a cap).
        inflight: the latest resend's publish, while the broker has not taken it.
    """

    seq: int
    coordinator: str
    result: TaskResult
    size: int
    spooled_at: float
    due: float
    backoff: float
    inflight: asyncio.Future[None] | None = None

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.result.run, self.result.task, self.result.attempt)


class ResultSpool:
    """Results waiting for ``ResultsStored``, and telemetry waiting for the broker.

    Args:
        path: the SQLite file (created with its directory).
        agent: the agent id (recorded in the stored encoding).
        max_results: results held before the agent refuses new work (see :attr:`full`).
        max_bytes: bytes of results held before the same.
        resend_after: seconds an unacknowledged result waits before it is sent again.
        max_telemetry: telemetry samples kept while offline (oldest dropped first).

    A full spool never drops a result: the agent stops accepting assignments until
    acknowledgements make room, and says so in its log.
    """

    def __init__(
        self,
        path: Path,
        *,
        agent: AgentId,
        max_results: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        resend_after: float = 30.0,
        max_telemetry: int = 1000,
    ) -> None:
        if max_results < 1 or max_bytes < 1 or max_telemetry < 0 or not resend_after > 0:
            raise ValueError("spool bounds must be positive (max_telemetry may be 0) and resend_after > 0")
        self.path = path
        self._agent = agent
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.resend_after = resend_after
        self.max_telemetry = max_telemetry
        self._codec = Codec(sender=f"agent/{agent}/spool")
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one SQLite transaction at a time, in a worker thread
        self._entries: dict[TaskRef, SpoolEntry] = {}  # insertion order = seq order
        self._acked: list[TaskRef] = []  # acknowledged, row not yet deleted
        self._recent: OrderedDict[TaskRef, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()  # set while no result is held
        self._empty.set()
        self._seq = 0
        self._telemetry = 0  # rows in the telemetry table
        self._telemetry_dropped = 0
        self.bytes = 0
        self.was_full = False
        self.write_errors = 0
        self._commits = 0  # since the last checkpoint

    # -- lifecycle ----------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` in a worker thread (the caller holds ``_lock``). Cancelled meanwhile, it
        still waits for the thread: two transactions never overlap on the connection."""
        fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await fut
            raise

    async def open(self) -> int:
        """Open (or create) the file and load what a previous process left; returns that count."""
        rows, telemetry = await asyncio.to_thread(self._open)
        now = time.monotonic()
        for seq, coordinator, payload, spooled_at in rows:
            try:
                results = self._codec.decode(payload).message
                assert isinstance(results, TasksFinished)
                result = results.results[0]
            except (DagonError, AssertionError, IndexError) as exc:
                log.error(
                    "spool %s: entry %d cannot be read (%s); it is kept on disk but not sent", self.path, seq, exc
                )
                continue
            entry = SpoolEntry(seq, coordinator, result, len(payload), spooled_at, now, self.resend_after)
            self._entries[entry.ref] = entry
            self.bytes += entry.size
            self._seq = max(self._seq, seq)
        self._telemetry = telemetry
        if self._entries:
            self._empty.clear()
        if self._entries or telemetry:  # nothing is lost: they go out (info, not a warning)
            log.info(
                "spool %s: %d result(s) not yet acknowledged and %d telemetry sample(s) from before; sending them",
                self.path, len(self._entries), telemetry,
            )  # fmt: skip
        return len(self._entries)

    def _open(self) -> tuple[list[tuple[int, str, bytes, float]], int]:
        private_dir(self.path.parent)
        private_file(self.path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # see checkpoint_loop(): never inside a commit
            db.execute("PRAGMA journal_size_limit=8388608")  # the WAL shrinks back after a burst
            db.executescript(_SCHEMA)
            rows = db.execute("SELECT seq, coordinator, payload, spooled_at FROM results ORDER BY seq").fetchall()
            telemetry = db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        return rows, int(telemetry)

    async def close(self) -> None:
        """Write pending acknowledgements and close the file."""
        async with self._lock:
            if self._db is None:
                return
            acked, self._acked = self._acked, []
            with contextlib.suppress(sqlite3.Error):
                await self._in_thread(self._write, [], acked)
            db, self._db = self._db, None
            await self._in_thread(db.close)

    # -- results ------------------------------------------------------------------

    async def put(self, items: list[tuple[str, TaskResult]]) -> None:
        """Spool ``(coordinator, result)`` pairs durably (one transaction) before they are sent.

        A failing disk does not lose the results: they are still sent and kept in
        memory until acknowledged, and the error is logged.
        """
        now, mono = time.time(), time.monotonic()
        entries = []
        for coordinator, result in items:
            payload = self._encode(result)
            if payload is None:
                continue
            self._seq += 1
            entry = SpoolEntry(self._seq, coordinator, result, len(payload), now, mono + self.resend_after,
                               self.resend_after)  # fmt: skip
            entries.append((entry, payload))
        rows: list[tuple[str, str, str, int, float, bytes]] = [
            (e.coordinator, e.result.run, e.result.task, e.result.attempt, now, p) for e, p in entries
        ]
        async with self._lock:
            acked, self._acked = self._acked, []
            if self._db is not None:
                try:
                    await self._commit(rows, acked)
                except sqlite3.Error as exc:
                    self.write_errors += 1
                    self._acked.extend(acked)
                    log.error(
                        "spool %s: cannot store %d result(s) (%s); they are sent but would not survive a restart",
                        self.path, len(rows), exc,
                    )  # fmt: skip
        for entry, _ in entries:
            old = self._entries.pop(entry.ref, None)
            if old is not None:  # the same attempt again (a previous process's row): one entry
                self.bytes -= old.size
            self._entries[entry.ref] = entry
            self.bytes += entry.size
        self._check_full()

    def _encode(self, result: TaskResult) -> bytes | None:
        try:
            return self._codec.encode(TasksFinished(agent=self._agent, results=(result,)))
        except ProtocolError as exc:
            # Too big (a huge manifest) or not plain data: keep what is sent in that case too.
            slim = dataclasses.replace(
                result, outputs=(), value=None, stderr_tail=result.stderr_tail[-1024:],
                error=" ".join(filter(None, [result.error, f"[report truncated: {exc}]"])),
            )  # fmt: skip
            try:
                return self._codec.encode(TasksFinished(agent=self._agent, results=(slim,)))
            except ProtocolError as again:
                log.error("spool %s: the result of %s/%s cannot be stored (%s); it is only sent", self.path,
                          result.run, result.task, again)  # fmt: skip
                return None

    def _write(self, rows: list[tuple[str, str, str, int, float, bytes]], acked: list[TaskRef]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            if rows:
                # REPLACE: the same attempt spooled again (a previous process's row) keeps one row.
                # SQLite numbers the rows: order survives even if two processes share the file.
                db.executemany(
                    "INSERT OR REPLACE INTO results (coordinator, run, task, attempt, spooled_at, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            if acked:
                db.executemany(
                    "DELETE FROM results WHERE run = ? AND task = ? AND attempt = ?",
                    [(r.run, r.task, r.attempt) for r in acked],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def acknowledge(self, refs: tuple[TaskRef, ...] | list[TaskRef]) -> int:
        """The coordinator stored these: forget them (rows go in the next transaction); returns how many."""
        dropped = 0
        for ref in refs:
            entry = self._entries.pop(ref, None)
            if entry is None:
                continue
            dropped += 1
            self.bytes -= entry.size
            self._acked.append(ref)
            self._remember(ref)
        if dropped:
            self._wake.set()
            self._check_full()
        return dropped

    def _remember(self, ref: TaskRef) -> None:
        self._recent[ref] = None
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    async def prune_loop(self) -> None:
        """Delete acknowledged rows as acknowledgements come (the spool's writer loop)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            async with self._lock:
                acked, self._acked = self._acked, []
                if not acked or self._db is None:
                    continue
                try:
                    await self._commit([], acked)
                except sqlite3.Error as exc:
                    self._acked.extend(acked)
                    log.error("spool %s: cannot delete acknowledged results (%s); retrying later", self.path, exc)
            await asyncio.sleep(0.01)  # coalesce a burst of acknowledgements into one transaction

    async def checkpoint_loop(self) -> None:
        """Move the WAL into the database now and then, in a worker thread (commits never do it)."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            if self._commits and self._db is not None:
                self._commits = 0
                try:
                    await asyncio.to_thread(self._checkpoint)
                except sqlite3.Error as exc:
                    log.warning("spool %s: WAL checkpoint failed: %s", self.path, exc)

    def _checkpoint(self) -> None:
        # Its own connection: a PASSIVE checkpoint runs beside the writer without blocking it.
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def _commit(self, rows: list[tuple[str, str, str, int, float, bytes]], acked: list[TaskRef]) -> None:
        """One transaction (the caller holds ``_lock``): small ones inline — a WAL commit without
        fsync or checkpoint costs tens of microseconds, less than a hop to a worker thread on the
        latency of every result — larger ones in a worker thread."""
        self._commits += 1
        if len(rows) + len(acked) <= INLINE_ROWS:
            self._write(rows, acked)
        else:
            await self._in_thread(self._write, rows, acked)

    def get(self, ref: TaskRef) -> SpoolEntry | None:
        """The unacknowledged result of ``ref``, if spooled."""
        return self._entries.get(ref)

    def done(self, ref: TaskRef) -> bool:
        """``ref`` finished here: its result is spooled or was acknowledged recently."""
        return ref in self._entries or ref in self._recent

    def entries(self) -> list[SpoolEntry]:
        """Unacknowledged results, oldest first."""
        return list(self._entries.values())

    def refs(self) -> list[TaskRef]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def drop(self, entry: SpoolEntry, why: str, *, quiet: bool = False) -> None:
        """Give up on one result: logged as a warning, unless ``quiet`` (nothing of value is lost)."""
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "spool %s: dropping the result of %s/%s attempt %d for coordinator %s: %s",
            self.path, entry.result.run, entry.result.task, entry.result.attempt, entry.coordinator, why,
        )  # fmt: skip
        if self._entries.pop(entry.ref, None) is not None:
            self.bytes -= entry.size
            self._acked.append(entry.ref)
            self._wake.set()
            self._check_full()

    @property
    def full(self) -> bool:
        """True while the spool holds its maximum: the agent accepts no new work."""
        return len(self._entries) >= self.max_results or self.bytes >= self.max_bytes

    async def wait_empty(self) -> None:
        """Return once no result is held (every one acknowledged or dropped)."""
        await self._empty.wait()

    def _check_full(self) -> None:
        if self._entries:
            self._empty.clear()
        else:
            self._empty.set()
        full = self.full
        if full and not self.was_full:
            log.error(
                "spool %s is full (%d results, %d bytes unacknowledged; limits %d, %d): refusing new tasks until"
                " the coordinator acknowledges some — is it reachable? (raise spool_max_results/spool_max_bytes)",
                self.path, len(self._entries), self.bytes, self.max_results, self.max_bytes,
            )  # fmt: skip
        elif not full and self.was_full:
            log.warning("spool %s has room again (%d results held); accepting tasks", self.path, len(self._entries))
        self.was_full = full

    # -- telemetry ------------------------------------------------------------------

    @property
    def telemetry_backlog(self) -> int:
        """Telemetry samples waiting for the broker."""
        return self._telemetry

    async def add_telemetry(self, payload: bytes) -> None:
        """Keep a sample that could not be published (the oldest go when over ``max_telemetry``)."""
        if self.max_telemetry == 0 or self._db is None:
            return
        async with self._lock:
            try:
                over = await self._in_thread(self._add_telemetry, payload)
            except sqlite3.Error as exc:
                log.warning("spool %s: telemetry sample not kept: %s", self.path, exc)
                return
        self._telemetry = min(self._telemetry + 1, self.max_telemetry)
        if over:
            if self._telemetry_dropped == 0:
                log.warning(
                    "spool %s: %d telemetry samples held while offline; dropping the oldest", self.path,
                    self.max_telemetry,
                )  # fmt: skip
            self._telemetry_dropped += over

    def _add_telemetry(self, payload: bytes) -> int:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            db.execute("INSERT INTO telemetry (payload) VALUES (?)", (payload,))
            cur = db.execute(
                "DELETE FROM telemetry WHERE seq <= (SELECT MAX(seq) FROM telemetry) - ?", (self.max_telemetry,)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return max(0, cur.rowcount)

    async def telemetry_head(self, n: int) -> list[tuple[int, bytes]]:
        """The oldest ``n`` kept samples, as ``(seq, payload)``."""
        if self._db is None or self._telemetry == 0:
            return []
        db = self._db
        async with self._lock:
            rows = await self._in_thread(
                lambda: db.execute("SELECT seq, payload FROM telemetry ORDER BY seq LIMIT ?", (n,)).fetchall()
            )
        return [(int(s), bytes(p)) for s, p in rows]

    async def telemetry_sent(self, upto: int) -> None:
        """Samples up to ``upto`` (a seq) were published."""
        if self._db is None:
            return
        db = self._db

        def delete() -> int:
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM telemetry WHERE seq <= ?", (upto,))
                left = int(db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return left

        async with self._lock:
            self._telemetry = await self._in_thread(delete)
        if self._telemetry == 0 and self._telemetry_dropped:
            log.warning("spool %s: telemetry delivered; %d older sample(s) were dropped", self.path,
                        self._telemetry_dropped)  # fmt: skip
            self._telemetry_dropped = 0
