"""Runs from the run store back into the engine — and out of it when the coordinator stops.

The store side of recovery (the engine side, replaying stored states, is
:mod:`dagon.core._recovery`):

* a restarted coordinator resumes the runs the store records as running under its id;
* ``dagon resume RUN`` reopens a run that ended (or was interrupted) and runs again
  what did not succeed;
* an in-process coordinator (``dagon run``) that stops records its unfinished runs as
  ``interrupted``, so that a later ``dagon resume`` continues them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from dagon.core._attempts import past_attempts
from dagon.core._dispatch import Dispatcher
from dagon.core._engine import Engine
from dagon.core._errors import RunNotFound, ValidationError
from dagon.core._events import RunTransition
from dagon.core._model import Workflow
from dagon.core._output import PublicOutput
from dagon.core._results import stored_status_doc
from dagon.core._retention import Retention
from dagon.core._states import RunState
from dagon.core._store import Store
from dagon.core._writer import StoreWriter
from dagon.protocol import RunId

__all__ = ["INTERRUPTED", "Restorer"]

log = logging.getLogger(__name__)

INTERRUPTED: Final = "interrupted"  # stored state of a run whose in-process coordinator stopped
REPUBLISH_WINDOW: Final = 3600.0  # seconds: runs that ended this recently get their final status retained again


class Restorer:
    """Moves runs between the run store and the engine for one coordinator.

    Args:
        engine: where restored runs go.
        store: the run store.
        writer: its batching writer (the same one the run feed writes through).
        dispatch: executes the commands restoring a run produces.
        coordinator_id: whose runs these are.
    """

    def __init__(
        self, engine: Engine, store: Store, writer: StoreWriter, dispatch: Dispatcher, *, coordinator_id: str
    ) -> None:
        self._engine = engine
        self._store = store
        self._writer = writer
        self._dispatch = dispatch
        self._id = coordinator_id

    async def restore_unfinished(self) -> None:
        """Resume this coordinator's runs the store records as running (it restarted; see dagon.core._recovery).

        Only runs created by a coordinator of the same id: in-process coordinators of
        clients (``dagon run``) have ids of their own and share a home's store without
        taking over each other's runs; ``dagon resume RUN`` takes one over explicitly.

        Runs are restored before the broker connection opens, so the first reports
        and announcements already find them.
        """
        ids = await asyncio.to_thread(self._store.unfinished_runs, self._id)
        for run in ids:
            await self._restore(RunId(run), reopen=False)

    async def republish_ended(self, output: PublicOutput, retention: Retention | None) -> int:
        """Retain again the final status of this coordinator's runs that ended in the last
        ``keep_finished`` seconds (at most :data:`REPUBLISH_WINDOW`); returns how many. Its last life
        may have been killed between storing a run's end (write-ahead) and publishing it, and a
        client waiting on the broker would then wait for ever."""
        window = min(retention.keep_for, REPUBLISH_WINDOW) if retention is not None else REPUBLISH_WINDOW
        ids = await asyncio.to_thread(self._store.ended_since, self._id, time.time() - window)
        for run in ids:
            stored = await asyncio.to_thread(self._store.load, run)
            if stored is not None:
                output.run_ended_before(RunId(run), stored_status_doc(stored, coordinator=self._id))
        if ids:
            log.info("retained the final status of %d run(s) that ended in the last %.0f s again", len(ids), window)
        return len(ids)

    async def _restore(self, run: RunId, *, reopen: bool) -> bool:
        stored = await asyncio.to_thread(self._store.load, run)
        if stored is None:
            raise RunNotFound(run)
        try:
            workflow = Workflow.from_dict(stored.spec)
            graph = workflow.graph(external=True)
            commands, summary = self._engine.restore(
                run, workflow, graph, stored.tasks, now=time.time(),
                keep_scratch=bool(stored.options.get("keep_scratch")), reopen=reopen,
            )  # fmt: skip
        except ValidationError as exc:
            log.error("run %s cannot be resumed: %s", run, exc)
            self._writer.run_state(run, RunState.FAILED.value, f"cannot be resumed: {exc}", time.time())
            await self._writer.commit()
            return False
        self._engine.runs[run].retries = past_attempts(stored.retried)  # what ran more than once, and why
        log.warning("%s run %s of workflow %s: %s", "reopened" if reopen else "resumed", run, workflow.name, summary)
        self._dispatch.queue(commands)
        return True

    async def resume(self, run: RunId) -> RunId:
        """See :meth:`Coordinator.resume` (the run is not running here)."""
        record = await asyncio.to_thread(self._store.get_run, run)
        if record is None:
            raise RunNotFound(run)
        self._engine.forget(run)
        await asyncio.to_thread(self._store.reopen, run, self._id)
        if not await self._restore(run, reopen=True):
            raise ValidationError(f"run {run} cannot be resumed (see the coordinator's log)")
        # Announced like a start: public status and event, listeners (e.g. the MongoDB sink).
        resumed = RunTransition(run, RunState.RUNNING, "resumed", time.time(), self._engine.runs[run])
        self._dispatch.queue([resumed])
        return run

    async def interrupt_running(self) -> None:
        """Record every run still going as interrupted (``dagon resume`` continues it)."""
        now = time.time()
        for run, view in self._engine.runs.items():
            if view.state is RunState.RUNNING:
                cause = f"{self._id} stopped before the run ended; 'dagon resume {run}' continues it"
                self._writer.run_state(run, INTERRUPTED, cause, now)
                log.warning("run %s interrupted: %s", run, cause)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._writer.commit()
