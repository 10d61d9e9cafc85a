"""The run store: runs, task states and every transition, in SQLite (WAL).

The API is synchronous and batch-oriented; the coordinator calls it through
``asyncio.to_thread`` so the event loop never waits on the disk. One
connection, used from one worker thread at a time (``check_same_thread`` off,
serialised by the coordinator's single persist loop).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["RunRecord", "RunStore", "Store", "StoredRun", "TaskRecord", "TaskRow", "Transition"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    cause TEXT NOT NULL DEFAULT '',
    submitted_at REAL NOT NULL,
    finished_at REAL,
    options TEXT NOT NULL DEFAULT '{}',
    coordinator TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tasks (
    run TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agent TEXT,
    cause TEXT NOT NULL DEFAULT '',
    result TEXT,
    PRIMARY KEY (run, name)
);
CREATE TABLE IF NOT EXISTS transitions (
    run TEXT NOT NULL,
    task TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agent TEXT,
    cause TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_run ON transitions (run, task);
"""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    workflow: str
    state: str
    cause: str
    submitted_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    name: str
    state: str
    attempt: int
    agent: str | None
    cause: str
    result: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StoredRun:
    """What a coordinator needs to resume a run: its spec, options and every task's last state."""

    record: RunRecord
    spec: dict[str, Any]
    options: dict[str, Any]
    # task -> (state, attempt, agent, cause, result document or None)
    tasks: dict[str, tuple[str, int, str | None, str, dict[str, Any] | None]]
    # the transitions that sent an active attempt back (retries: see dagon.core._attempts), in order
    retried: list[Transition] = field(default_factory=list)


class Store(Protocol):
    """What a coordinator needs of a run store (:class:`RunStore` is the SQLite one).

    Another backend implements these methods with the same meaning. ``write`` must be
    atomic (all of a batch or nothing) and durable once it returns: the coordinator acts
    on a decision only after the batch recording it was written. Calls come from one
    thread at a time, either the event loop (small batches) or a worker thread.
    """

    path: str

    def create_run(
        self, run: str, workflow: str, spec: dict[str, Any], submitted_at: float,
        options: dict[str, Any] | None = None, coordinator: str = "",
    ) -> None: ...  # fmt: skip
    def write(
        self,
        *,
        transitions: Sequence[Transition] = (),
        tasks: Sequence[TaskRow] = (),
        runs: Iterable[tuple[str, str, str, float | None]] = (),
    ) -> None: ...
    def unfinished_runs(self, coordinator: str) -> list[str]: ...
    def ended_since(self, coordinator: str, since: float) -> list[str]: ...
    def load(self, run: str) -> StoredRun | None: ...
    def reopen(self, run: str, coordinator: str) -> None: ...
    def get_run(self, run: str) -> RunRecord | None: ...
    def list_runs(self, limit: int = 50) -> list[RunRecord]: ...
    def checkpoint(self) -> None: ...
    def close(self) -> None: ...


def _columns(n: int) -> str:
    return ", ".join(f"json_extract(value, '$[{i}]')" for i in range(n))


_INSERT_TRANSITIONS = f"INSERT INTO transitions SELECT {_columns(8)} FROM json_each(?)"
_UPSERT_TASKS = (
    f"INSERT INTO tasks (run, name, state, attempt, agent, cause, result) SELECT {_columns(7)} FROM json_each(?)"
    " WHERE true ON CONFLICT (run, name) DO UPDATE SET state=excluded.state, attempt=excluded.attempt,"
    " agent=excluded.agent, cause=excluded.cause, result=coalesce(excluded.result, tasks.result)"
)

# (run, task, old, new, attempt, agent, cause, at)
Transition = tuple[str, str, str, str, int, str | None, str, float]
# (run, task, state, attempt, agent, cause, result-json or None)
TaskRow = tuple[str, str, str, int, str | None, str, str | None]


def _private_db(path: Path) -> None:
    """Create the store's directory 0700 when missing and the file 0600 (SQLite gives its WAL and
    shared-memory files the same mode): it holds every command and result."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077 and info.st_uid == os.geteuid():
            path.chmod(0o600)


class RunStore:
    """SQLite-backed store. ``path`` may be ``":memory:"`` for tests."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            _private_db(Path(path))
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The coordinator commits small batches from its event loop (tens of microseconds); the
        # occasional WAL checkpoint, which copies pages and syncs, runs in a worker thread on a
        # second connection instead (see checkpoint()).
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._ckpt: sqlite3.Connection | None = None
        self._ckpt_lock = threading.Lock()
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a store written by an older dagon up to this schema (columns are only added)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "options" not in columns:
            self._db.execute("ALTER TABLE runs ADD COLUMN options TEXT NOT NULL DEFAULT '{}'")
        if "coordinator" not in columns:
            self._db.execute("ALTER TABLE runs ADD COLUMN coordinator TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._ckpt_lock, self._lock:
            if self._ckpt is not None:
                self._ckpt.close()
                self._ckpt = None
            self._db.close()  # the last connection to close checkpoints what is left

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database (call from a worker thread)."""
        if self.path == ":memory:":
            return
        with self._ckpt_lock:
            if self._ckpt is None:
                self._ckpt = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def create_run(
        self,
        run: str,
        workflow: str,
        spec: dict[str, Any],
        submitted_at: float,
        options: dict[str, Any] | None = None,
        coordinator: str = "",
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (id, workflow, spec, state, submitted_at, options, coordinator)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (run, workflow, json.dumps(spec), submitted_at, json.dumps(options or {}), coordinator),
            )

    def unfinished_runs(self, coordinator: str) -> list[str]:
        """Ids of ``coordinator``'s runs still recorded as running (oldest first): what it resumes on restart."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM runs WHERE state='running' AND coordinator=? ORDER BY submitted_at", (coordinator,)
            ).fetchall()
        return [row[0] for row in rows]

    def ended_since(self, coordinator: str, since: float) -> list[str]:
        """Ids of ``coordinator``'s runs that ended at ``since`` or later (oldest first): a restarted
        coordinator publishes their final status again (its last life may have died between
        storing an end and publishing it)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM runs WHERE state!='running' AND coordinator=? AND finished_at>=? ORDER BY finished_at",
                (coordinator, since),
            ).fetchall()
        return [row[0] for row in rows]

    def load(self, run: str) -> StoredRun | None:
        """A run's spec and each task's latest state (from its last transition and stored result)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, workflow, state, cause, submitted_at, finished_at, spec, options FROM runs WHERE id=?",
                (run,),
            ).fetchone()
            if row is None:
                return None
            last = self._db.execute(
                "SELECT task, new, attempt, agent, cause FROM transitions WHERE rowid IN"
                " (SELECT max(rowid) FROM transitions WHERE run=? GROUP BY task)",
                (run,),
            ).fetchall()
            results = self._db.execute("SELECT name, state, attempt, result FROM tasks WHERE run=?", (run,)).fetchall()
            retried = self._db.execute(
                "SELECT * FROM transitions WHERE run=? AND old IN ('dispatched', 'running')"
                " AND new IN ('ready', 'retry_wait', 'pending') ORDER BY rowid",
                (run,),
            ).fetchall()
        tasks: dict[str, tuple[str, int, str | None, str, dict[str, Any] | None]] = {
            task: (state, attempt, agent, cause, None) for task, state, attempt, agent, cause in last
        }
        for name, state, attempt, result in results:
            old = tasks.get(name)
            if old is None or (old[0], old[1]) == (state, attempt):
                doc = json.loads(result) if result else None
                tasks[name] = (state, attempt, old[2] if old else None, old[3] if old else "", doc)
        record = RunRecord(*row[:6])
        return StoredRun(record, json.loads(row[6]), json.loads(row[7] or "{}"), tasks, retried)

    def reopen(self, run: str, coordinator: str) -> None:
        """Mark a run as running again under ``coordinator`` (``dagon resume``)."""
        with self._lock:
            self._db.execute(
                "UPDATE runs SET state='running', cause='resumed', finished_at=NULL, coordinator=? WHERE id=?",
                (coordinator, run),
            )

    def write(
        self,
        *,
        transitions: Sequence[Transition] = (),
        tasks: Sequence[TaskRow] = (),
        runs: Iterable[tuple[str, str, str, float | None]] = (),
    ) -> None:
        """Write one batch atomically: transitions, latest task rows, run states.

        Rows travel as one JSON array per table and are unpacked by SQLite
        (``json_each``): one statement per batch instead of one per row, so a
        writer thread does not wait for the GIL between rows while the event
        loop is busy (that convoy made per-row ``executemany`` 40x slower).
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                if transitions:
                    db.execute(_INSERT_TRANSITIONS, (json.dumps(transitions),))
                if tasks:
                    db.execute(_UPSERT_TASKS, (json.dumps(tasks),))
                db.executemany(
                    "UPDATE runs SET state=?, cause=?, finished_at=? WHERE id=?",
                    ((state, cause, finished, run) for run, state, cause, finished in runs),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def get_run(self, run: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, workflow, state, cause, submitted_at, finished_at FROM runs WHERE id=?", (run,)
            ).fetchone()
        return RunRecord(*row) if row else None

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, workflow, state, cause, submitted_at, finished_at FROM runs"
                " ORDER BY submitted_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [RunRecord(*row) for row in rows]

    def tasks(self, run: str) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, state, attempt, agent, cause, result FROM tasks WHERE run=? ORDER BY rowid", (run,)
            ).fetchall()
        return [TaskRecord(n, s, a, ag, c, json.loads(r) if r else None) for n, s, a, ag, c, r in rows]

    def transitions(self, run: str) -> list[Transition]:
        with self._lock:
            return self._db.execute("SELECT * FROM transitions WHERE run=? ORDER BY rowid", (run,)).fetchall()
