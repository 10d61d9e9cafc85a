"""Write-behind persistence of a coordinator's transitions to the run store.

The coordinator records what happened (``transition``, ``task_row``,
``run_state``, ``create_run``); the writer batches it and hands each batch to
the store in a worker thread, so the event loop never waits on the disk. A
short coalescing delay turns bursts into one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from dagon.core._store import RunStore, TaskRow, Transition

__all__ = ["StoreWriter"]

log = logging.getLogger(__name__)

COALESCE: Final = 0.05  # seconds a batch may wait to grow


class StoreWriter:
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._batch: list[tuple[str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failed_batches = 0

    def transition(self, row: Transition) -> None:
        self._batch.append(("t", row))

    def task_row(self, row: TaskRow) -> None:
        self._batch.append(("task", row))

    def run_state(self, run: str, state: str, cause: str, at: float | None) -> None:
        self._batch.append(("run", (run, state, cause, at)))

    def create_run(self, run: str, workflow: str, spec: dict[str, Any], at: float) -> None:
        self._batch.append(("create", (run, workflow, spec, at)))

    def flush_soon(self) -> None:
        if self._batch:
            self._idle.clear()
            self._wake.set()

    async def drain(self) -> None:
        """Wait until everything recorded so far is written (or failed)."""
        self.flush_soon()
        while self._batch or not self._idle.is_set():
            await self._idle.wait()
            if self._batch:
                self.flush_soon()

    async def run(self) -> None:
        """The writer loop (a named task in the coordinator's group)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(COALESCE)
            batch, self._batch = self._batch, []
            try:
                if batch:
                    await asyncio.to_thread(_write, self.store, batch)
            except Exception:
                self.failed_batches += 1
                log.exception("run store write failed; %d records not persisted", len(batch))
            finally:
                if not self._batch:
                    self._idle.set()


def _write(store: RunStore, batch: list[tuple[str, Any]]) -> None:
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
            with contextlib.suppress(Exception):  # a duplicate submission must not lose the batch
                store.create_run(*item)
    store.write(transitions=transitions, tasks=tasks, runs=runs)
