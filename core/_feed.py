"""The run feed: everything that watches runs hears of their changes here.

One place turns the engine's transitions into what the outside sees: the run
store's rows (through the batching :class:`~dagon.core._writer.StoreWriter`),
the public MQTT documents (:class:`~dagon.core._output.PublicOutput`), the
in-process watchers (``Coordinator.events``) and waiters (``Coordinator.wait``),
listeners (given frozen snapshots) and Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from dagon.core._attempts import PastAttempt, record_retry
from dagon.core._engine import Engine
from dagon.core._events import RunTransition, TaskTransition, TaskWaiting
from dagon.core._listeners import CoordinatorListener, RunSnapshot, TaskSnapshot, notify
from dagon.core._output import PublicOutput
from dagon.core._results import RunEvent, RunResult, task_result_doc
from dagon.core._retention import result_from_store
from dagon.core._states import TERMINAL, RunState, TaskState
from dagon.core._views import TaskView
from dagon.core._writer import StoreWriter
from dagon.protocol import RunId, TaskProgress, encode_public

__all__ = ["RunFeed"]

log = logging.getLogger(__name__)


class RunFeed:
    """Fans run and task changes out to the store, the public output, watchers and listeners.

    Args:
        engine: whose runs the changes are about (read only).
        output: the public MQTT output.
        writer: the run store's writer (None: no store).
        publish_results: publish per-task results and events (run status is always published).
    """

    def __init__(
        self, engine: Engine, *, output: PublicOutput, writer: StoreWriter | None, publish_results: bool
    ) -> None:
        self._engine = engine
        self.output = output
        self.writer = writer
        self.publish_results = publish_results
        self._watchers: dict[RunId, list[asyncio.Queue[RunEvent | None]]] = defaultdict(list)
        self._waiters: dict[RunId, asyncio.Future[RunResult]] = {}
        self.listeners: list[CoordinatorListener] = []
        self.metrics: Any = None  # a CoordinatorMetrics (dagon.core._metrics) once bound

    # -- changes ----------------------------------------------------------------

    def task_changed(self, t: TaskTransition) -> None:
        run = t.run
        self.output.touch(run)
        past = PastAttempt.of(t.old.value, t.new.value, t.attempt, t.agent, t.cause)
        if past is not None:  # kept with the run: results, statuses and `dagon status` show it
            record_retry(self._task(t).run.retries, t.task, past)
        # pending -> ready is derived state (all dependencies succeeded): it is neither
        # stored nor published, which halves the burst when a fan-out opens.
        derived = t.old is TaskState.PENDING and t.new is TaskState.READY
        writer = self.writer
        if writer is not None and not derived:
            writer.transition((run, t.task, t.old.value, t.new.value, t.attempt, t.agent, t.cause, t.at))
        watchers = self._watchers.get(run)
        if watchers or (self.publish_results and not derived):
            event = RunEvent(run, t.task, t.new.value, t.old.value, t.attempt, t.agent, t.cause, t.at)
            if watchers:
                for queue in watchers:
                    queue.put_nowait(event)
            if not derived:
                self.output.event(event)
        if self.listeners and not derived:
            view = self._task(t)
            frozen = any(listener.frozen_tasks for listener in self.listeners)
            notify(self.listeners, "task_changed", t, TaskSnapshot.of(view) if frozen else view)
        if t.new in TERMINAL:
            view = self._task(t)
            if self.metrics is not None:
                self.metrics.task_ended(view)
            if writer is None and not self.publish_results:
                return
            payload = encode_public(task_result_doc(view))  # encoded once: stored and published
            if writer is not None:
                writer.task_row((run, t.task, t.new.value, t.attempt, t.agent, t.cause, payload.decode()))
            self.output.task_result(run, t.task, payload)

    def _task(self, t: TaskTransition) -> TaskView:
        return t.view if t.view is not None else self._engine.runs[t.run].tasks[t.task]

    def run_changed(self, t: RunTransition) -> None:
        view = t.view if t.view is not None else self._engine.runs[t.run]
        self.output.touch(t.run)
        event = RunEvent(t.run, None, t.new.value, None, 0, None, t.cause, t.at)
        self.output.event(event)
        if self.listeners:
            notify(self.listeners, "run_changed", t, RunSnapshot.of(view))
        if t.new is RunState.RUNNING:
            log.info("run %s started (%d tasks)", t.run, len(view.tasks))
            return
        log.info("run %s %s: %s", t.run, t.new.value, t.cause)
        if self.writer is not None:
            self.writer.run_state(t.run, t.new.value, t.cause, t.at)
        for queue in self._watchers.pop(t.run, ()):
            queue.put_nowait(event)
            queue.put_nowait(None)
        fut = self._waiters.pop(t.run, None)
        if fut is not None and not fut.done():
            fut.set_result(RunResult.from_view(view))

    def progress(self, msg: TaskProgress, now: float) -> None:
        """An informational event (no state change) for the current attempt only."""
        run = self._engine.runs.get(msg.run)
        view = run.tasks.get(msg.task) if run is not None else None
        if view is None or view.attempt != msg.attempt or view.agent != msg.agent or view.state in TERMINAL:
            return
        state = view.state.value
        self._note(RunEvent(msg.run, msg.task, state, state, msg.attempt, msg.agent, msg.note[:500], now))

    def waiting(self, w: TaskWaiting) -> None:
        """Why a ready task is not placed: an informational event (state stays ready)."""
        state = TaskState.READY.value
        self._note(RunEvent(w.run, w.task, state, state, w.attempt, None, w.reason, w.at))

    def _note(self, event: RunEvent) -> None:
        for queue in self._watchers.get(RunId(event.run), ()):
            queue.put_nowait(event)
        self.output.event(event)

    # -- watching ---------------------------------------------------------------

    async def wait(self, run: RunId) -> RunResult:
        view = self._engine.runs.get(run)
        if view is None:  # unknown, or it left memory (see dagon.core._retention): the store answers
            return await result_from_store(self.writer.store if self.writer is not None else None, run)
        if view.state is not RunState.RUNNING:
            return RunResult.from_view(view)
        fut = self._waiters.get(run)
        if fut is None:
            fut = self._waiters[run] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(fut)

    async def events(self, run: RunId) -> AsyncIterator[RunEvent]:
        view = self._engine.run(run)
        if view.state is not RunState.RUNNING:
            return
        queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
        self._watchers[run].append(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            with contextlib.suppress(ValueError):
                self._watchers[run].remove(queue)

    def close(self) -> None:
        """The coordinator stops: every watcher's iteration ends."""
        for queues in self._watchers.values():
            for q in queues:
                q.put_nowait(None)
