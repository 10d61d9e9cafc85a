"""How long a finished run stays in the coordinator's memory (and its task results on the broker).

A coordinator that keeps every finished run grows with every run: ~1.4 KB per task in memory, and
one retained MQTT message per task result on the broker. The run store already holds everything
(``dagon status``, ``dagon report`` and ``Coordinator.wait`` read it), so a finished run leaves
memory — and its per-task results are cleared from the broker, leaving the run's final retained
status as its summary — once either bound is reached:

* it finished ``keep_for`` seconds ago (fetches, ``dagon watch``, late subscribers and runs that
  reference its outputs have had their time), or
* the finished runs still kept hold more than ``max_tasks`` tasks in all: the oldest go first, but
  never the most recently finished run (its caller is typically still reading its result).

Sans-IO: the coordinator tells it which runs ended and when, and asks which are due.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Final

from dagon.core._engine import Engine
from dagon.core._errors import RunNotFound
from dagon.core._output import DEFAULT_RESULT_EXPIRY, PublicOutput
from dagon.core._results import RunResult, TaskOutcome
from dagon.core._states import RUN_TERMINAL, RunState, TaskState
from dagon.core._store import Store, StoredRun
from dagon.protocol import RunId

__all__ = [
    "DEFAULT_KEEP_FINISHED",
    "DEFAULT_KEEP_FINISHED_TASKS",
    "Retention",
    "leave_memory",
    "result_from_store",
    "stored_result",
]

log = logging.getLogger(__name__)

DEFAULT_KEEP_FINISHED: Final = 600.0  # seconds a finished run stays in memory (like relayed outputs)
DEFAULT_KEEP_FINISHED_TASKS: Final = 100_000  # tasks of finished runs kept in memory at most (~140 MB)


class Retention:
    """Which finished runs are due to leave memory.

    Args:
        keep_for: seconds after its end a run is kept (0: until the next pass).
        max_tasks: tasks of finished runs kept at most, the most recent run excepted.
        result_expiry: MQTT 5 message expiry of retained run documents, in seconds (None: never) —
            what a coordinator that stopped could not clear goes too.
    """

    def __init__(
        self,
        *,
        keep_for: float = DEFAULT_KEEP_FINISHED,
        max_tasks: int = DEFAULT_KEEP_FINISHED_TASKS,
        result_expiry: int | None = DEFAULT_RESULT_EXPIRY,
    ) -> None:
        if keep_for < 0:
            raise ValueError(f"keep_finished must be 0 or more seconds, got {keep_for}")
        if max_tasks < 0:
            raise ValueError(f"keep_finished_tasks must be 0 or more, got {max_tasks}")
        self.keep_for = keep_for
        self.max_tasks = max_tasks
        self.result_expiry = result_expiry
        self._ended: OrderedDict[RunId, tuple[float, int]] = OrderedDict()  # in order of ending
        self._tasks = 0

    def ended(self, run: RunId, at: float, tasks: int) -> None:
        """``run`` (of ``tasks`` tasks) finished at ``at``."""
        if run in self._ended:
            self._drop(run)
        self._ended[run] = (at, tasks)
        self._tasks += tasks

    def reopened(self, run: RunId) -> None:
        """``run`` runs again (resumed): it is not finished any more."""
        if run in self._ended:
            self._drop(run)

    def _drop(self, run: RunId) -> None:
        _, tasks = self._ended.pop(run)
        self._tasks -= tasks

    @property
    def kept(self) -> int:
        """Finished runs still in memory."""
        return len(self._ended)

    def next_due(self) -> float | None:
        """When the oldest kept run is due by age (None: none kept)."""
        for at, _ in self._ended.values():
            return at + self.keep_for
        return None

    def due(self, now: float) -> list[RunId]:
        """The runs to forget now (and stop tracking them)."""
        out: list[RunId] = []
        while len(self._ended) > 1 and self._tasks > self.max_tasks:
            run = next(iter(self._ended))
            self._drop(run)
            out.append(run)
        while self._ended:
            run, (at, _) = next(iter(self._ended.items()))
            if at + self.keep_for > now:
                break
            self._drop(run)
            out.append(run)
        return out


def stored_result(stored: StoredRun) -> RunResult | None:
    """What ``Coordinator.wait`` returns for a run that left memory, from its stored rows
    (None: the run did not finish — running elsewhere, or interrupted)."""
    record = stored.record
    if record.state not in {s.value for s in RUN_TERMINAL}:
        return None
    tasks: dict[str, TaskOutcome] = {}
    for name, (state, attempt, agent, cause, doc) in stored.tasks.items():
        if doc is not None:
            tasks[name] = TaskOutcome.from_doc(doc)
        else:
            tasks[name] = TaskOutcome(name=name, state=TaskState(state), attempt=attempt, agent=agent, cause=cause)
    return RunResult(
        run=record.id,
        workflow=record.workflow,
        state=RunState(record.state),
        cause=record.cause,
        tasks=tasks,
        submitted_at=record.submitted_at,
        finished_at=record.finished_at,
    )


async def result_from_store(store: Store | None, run: RunId) -> RunResult:
    """The result of a finished run no longer in memory; RunNotFound if the store has no finished run."""
    stored = await asyncio.to_thread(store.load, run) if store is not None else None
    result = stored_result(stored) if stored is not None else None
    if result is None:
        raise RunNotFound(run)
    return result


def leave_memory(engine: Engine, output: PublicOutput, run: RunId) -> None:
    """A finished run leaves memory (the store keeps it) and its per-task results leave the broker."""
    view = engine.runs.get(run)
    if view is None or view.state is RunState.RUNNING:
        return
    output.run_left(view)
    engine.forget(run)
    log.debug("run %s left memory (kept in the run store)", run)
