"""Write-ahead persistence of a coordinator's decisions to the run store.

The coordinator records what happened (``transition``, ``task_row``,
``run_state``, ``create_run``) and then awaits :meth:`StoreWriter.commit`
before it acts on it: no assignment, acknowledgement or public message leaves
before the transitions behind it are in the store. A restarted coordinator
therefore never finds an attempt in the world that its store does not know.

Commits are grouped: everything recorded while a write is under way goes into
the next one, so batches grow with load and an idle coordinator writes each
decision at once. A small batch is committed inline (SQLite in WAL mode without
a sync per commit: tens of microseconds, less than a hop to a worker thread, which
matters on every link of a dependency chain); a large one, and the periodic WAL
checkpoint that does sync, go to a worker thread. A failed write keeps its
records and is retried with a capped backoff; until it succeeds the coordinator
does not act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from dagon.core._store import Store, TaskRow, Transition

__all__ = ["StoreWriter"]

log = logging.getLogger(__name__)

MAX_BACKOFF: Final = 5.0  # seconds between retries of a failing store
INLINE_MAX: Final = 64  # records a batch may hold to be committed on the event loop
CHECKPOINT_EVERY: Final = 500  # commits between WAL checkpoints


class StoreWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._batch: list[tuple[str, Any]] = []
        self._writing: asyncio.Future[None] | None = None
        self.failed_batches = 0
        self.commits = 0
        self._checkpoint: asyncio.Future[None] | None = None

    def transition(self, row: Transition) -> None:
        self._batch.append(("t", row))

    def task_row(self, row: TaskRow) -> None:
        self._batch.append(("task", row))

    def run_state(self, run: str, state: str, cause: str, at: float | None) -> None:
        self._batch.append(("run", (run, state, cause, at)))

    def create_run(
        self, run: str, workflow: str, spec: dict[str, Any], at: float, options: dict[str, Any], coordinator: str
    ) -> None:
        self._batch.append(("create", (run, workflow, spec, at, options, coordinator)))

    @property
    def pending(self) -> int:
        """Records not yet known to be on disk."""
        return len(self._batch)

    async def commit(self) -> None:
        """Return once everything recorded so far is in the store (group commit)."""
        while True:
            writing = self._writing
            if writing is not None:
                # Ours may be in it, or go into the next one. Awaiting a finished future does not
                # yield, so once it is done give its owner the turn it needs to clear it (a loop
                # here without a suspension point would never let it).
                if writing.done():
                    await asyncio.sleep(0)
                else:
                    await asyncio.shield(writing)
                continue
            if not self._batch:
                return
            batch, self._batch = self._batch, []
            if len(batch) <= INLINE_MAX:
                try:
                    _write(self.store, batch)
                except Exception:
                    pass  # retried, and logged, below (off the loop)
                else:
                    self._committed()
                    return
            self._writing = writing = asyncio.ensure_future(self._write(batch))
            writing.add_done_callback(self._written)
            await asyncio.shield(writing)

    def _written(self, writing: asyncio.Future[None]) -> None:
        if self._writing is writing:
            self._writing = None

    def _committed(self) -> None:
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY == 0 and (self._checkpoint is None or self._checkpoint.done()):
            self._checkpoint = asyncio.ensure_future(asyncio.to_thread(self._fold))

    def _fold(self) -> None:
        try:
            self.store.checkpoint()
        except Exception as exc:  # the log only grows; the next checkpoint tries again
            log.warning("run store %s: WAL checkpoint failed: %s", self.store.path, exc)

    async def drain(self) -> None:
        await self.commit()
        if self._checkpoint is not None:
            await self._checkpoint

    async def _write(self, batch: list[tuple[str, Any]]) -> None:
        delay = 0.1
        while True:
            try:
                await asyncio.to_thread(_write, self.store, batch)
                self._committed()
                return
            except Exception as exc:
                self.failed_batches += 1
                log.error(
                    "run store %s: write of %d record(s) failed (%s); nothing is acted on until it succeeds,"
                    " retrying in %.1f s",
                    self.store.path, len(batch), exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)


def _write(store: Store, batch: list[tuple[str, Any]]) -> None:
    transitions: list[Transition] = []
    tasks: list[TaskRow] = []
    runs: list[tuple[str, str, str, float | None]] = []
    for kind, item in batch:
        if kind == "t":
            transitions.append(item)
        elif kind == "task":
            tasks.append(item)
        elif kind == "run":
            runs.append(item)
        else:
            with contextlib.suppress(Exception):  # a run created twice (a resent submission) keeps the first
                store.create_run(*item)
    store.write(transitions=transitions, tasks=tasks, runs=runs)
