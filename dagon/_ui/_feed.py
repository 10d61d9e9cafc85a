"""The dashboard's listener on the coordinator, and the fan-out to open pages.

Invariants:
    * The coordinator never waits for a page: every listener hook appends to in-memory
      state and returns (a tuple append, a dict update, a flag). Encoding JSON and
      writing to sockets happen in the feed's own loop, at most every ``FLUSH_INTERVAL``.
    * With no page open nothing is encoded: the feed only keeps what a page opened later
      needs (each run's transitions and Gantt bars, each agent's recent telemetry).
    * A page first gets a snapshot of the current state, then deltas. A delta is applied
      on top of a snapshot idempotently (latest state per task, bars keyed by attempt),
      so a change that lands in both is harmless.
    * Each page has a bounded queue; a page that cannot keep up is told to resync (it
      reconnects and gets a fresh snapshot) instead of growing the coordinator's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from dagon._report import Attempt, AttemptBars
from dagon._ui._docs import Change, agent_doc, bar_row, run_summary, sample_row, task_detail, task_rows
from dagon._ui._history import stored_run, stored_runs, stored_task_detail
from dagon.core import (
    RUN_TERMINAL,
    AgentChanged,
    CoordinatorListener,
    RunState,
    RunTransition,
    TaskTransition,
)
from dagon.protocol import Telemetry

if TYPE_CHECKING:
    from dagon.core import Coordinator, RunView
    from dagon.protocol import TaskResult

__all__ = ["Page", "UiFeed"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL: Final = 0.25  # seconds: changes are coalesced and sent at most this often
SLOW_INTERVAL: Final = 1.0  # runs list and agents: at most this often
HISTORY: Final = 180  # telemetry samples kept per agent for a page opened later
KEEP_FINISHED: Final = 20  # journals of finished runs kept in memory (older ones come from the store)
QUEUE: Final = 256  # messages a page may fall behind before it is told to resync


@dataclass(slots=True)
class Journal:
    """What the feed saw of one run: every transition and the Gantt bars built from them."""

    complete: bool  # saw the run from its start (else the store has the beginning)
    # Plain tuples: the coordinator's TaskTransition carries the engine's live TaskView, which a
    # journal kept for finished runs must not hold on to.
    transitions: list[Change] = field(default_factory=list)
    tracker: AttemptBars = field(default_factory=AttemptBars)
    bars: dict[tuple[str, int], Attempt] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)
    energy_total: float = 0.0
    pending_tasks: dict[str, list[Any]] = field(default_factory=dict)
    pending_bars: dict[tuple[str, int], Attempt] = field(default_factory=dict)

    def record(self, t: Change) -> Attempt | None:
        self.transitions.append(t)
        bar = self.tracker.feed(t.task, t.old, t.new, t.attempt, t.agent, t.at)
        if bar is not None:
            self.bars[(bar.task, bar.attempt)] = bar
        return bar


class _RunChanged(Protocol):
    """What the run hook reads of what it is given (the engine's view or a frozen snapshot of it)."""

    @property
    def id(self) -> str: ...


class _TaskChanged(Protocol):
    """What the task hook reads of what it is given."""

    @property
    def result(self) -> TaskResult | None: ...


class Page:
    """One open page's stream: ``kind`` is ``runs``, ``agents`` or ``run`` (of ``run``)."""

    __slots__ = ("kind", "queue", "run", "stale")

    def __init__(self, kind: str, run: str | None = None) -> None:
        self.kind = kind
        self.run = run
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=QUEUE)
        self.stale = False

    def send(self, event: str, data: str) -> None:
        if self.stale:
            return
        try:
            self.queue.put_nowait((event, data))
        except asyncio.QueueFull:
            self.stale = True  # the stream handler sees it and tells the page to resync


def _dumps(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str)


class UiFeed(CoordinatorListener):
    """Keeps what the dashboard shows and streams changes to open pages.

    Args:
        coordinator: the coordinator it observes (read-only, except ``cancel``/``resume``
            which the server calls only when control is allowed).
    """

    frozen_tasks = False  # task_changed reads ``view.result`` in the hook and keeps nothing of the view

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._journals: OrderedDict[str, Journal] = OrderedDict()
        self._telemetry: dict[str, deque[list[Any]]] = {}
        self._pending_samples: list[list[Any]] = []
        self._dirty_runs: set[str] = set()
        self._pages: set[Page] = set()
        self._run_pages: dict[str, set[Page]] = {}
        self._wake = asyncio.Event()
        self._kicked = False
        self._last_slow = 0.0
        self._agents_sent: dict[str, dict[str, Any]] = {}
        self.sent = 0  # messages handed to pages (for tests and benchmarks)

    # -- listener hooks (synchronous, cheap) -----------------------------------

    def run_changed(self, transition: RunTransition, view: _RunChanged) -> None:
        if transition.new is RunState.RUNNING:
            journal = self._journals.get(view.id)
            if journal is None:
                # A resumed run's history is in the store; a new one starts here.
                self._journals[view.id] = Journal(complete=transition.cause != "resumed")
        elif transition.new in RUN_TERMINAL:
            if view.id in self._journals:
                self._journals.move_to_end(view.id)
            self._trim()
        self._dirty_runs.add(view.id)
        self._kick()

    def task_changed(self, transition: TaskTransition, view: _TaskChanged) -> None:
        t = transition
        journal = self._journals.get(t.run)
        if journal is None:
            journal = self._journals[t.run] = Journal(complete=False)
        bar = journal.record(Change(t.task, t.old, t.new, t.attempt, t.agent, t.cause, t.at))
        result = view.result
        if result is not None and result.attempt == t.attempt and result.energy_joules:
            old = journal.energy.get(t.task, 0.0)
            journal.energy[t.task] = result.energy_joules
            journal.energy_total += result.energy_joules - old
        if t.run in self._run_pages:
            journal.pending_tasks[t.task] = [t.new, t.attempt, t.agent]
            if bar is not None:
                journal.pending_bars[(bar.task, bar.attempt)] = bar
        self._dirty_runs.add(t.run)
        self._kick()

    def agent_telemetry(self, sample: Telemetry) -> None:
        row = sample_row(sample)
        history = self._telemetry.get(sample.agent)
        if history is None:
            history = self._telemetry[sample.agent] = deque(maxlen=HISTORY)
        history.append(row)
        if any(p.kind == "agents" for p in self._pages):
            self._pending_samples.append([sample.agent, row])
            self._kick()

    def agent_changed(self, change: AgentChanged) -> None:
        if any(p.kind == "agents" for p in self._pages):
            self._last_slow = 0.0  # online/offline goes out with the next flush, not the next slow round
            self._kick()

    def _kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            self._wake.set()

    def _trim(self) -> None:
        finished = [r for r in self._journals if self._run_state(r) != RunState.RUNNING.value]
        for run in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            if run not in self._run_pages:
                del self._journals[run]

    def _run_state(self, run: str) -> str:
        view = self.coordinator.engine.runs.get(run)  # type: ignore[call-overload]
        return view.state.value if view is not None else "gone"

    # -- pages -----------------------------------------------------------------

    @contextlib.contextmanager
    def page(self, kind: str, run: str | None = None) -> Any:
        """Register an open page for the duration of the block; yields its :class:`Page`."""
        page = Page(kind, run)
        self._pages.add(page)
        if run is not None:
            self._run_pages.setdefault(run, set()).add(page)
        try:
            yield page
        finally:
            self._pages.discard(page)
            if run is not None:
                pages = self._run_pages.get(run)
                if pages is not None:
                    pages.discard(page)
                    if not pages:
                        del self._run_pages[run]
                        journal = self._journals.get(run)
                        if journal is not None:
                            journal.pending_tasks.clear()
                            journal.pending_bars.clear()

    @property
    def pages(self) -> int:
        return len(self._pages)

    # -- snapshots (also the JSON API) -------------------------------------------

    def _summary(self, view: RunView) -> dict[str, Any]:
        journal = self._journals.get(view.id)
        energy = journal.energy_total if journal is not None and journal.complete and journal.energy else None
        if journal is None or not journal.complete:
            joules = [t.result.energy_joules for t in view.tasks.values() if t.result and t.result.energy_joules]
            energy = sum(joules) if joules else None
        return run_summary(view, energy=energy)

    async def runs(self, limit: int = 200) -> list[dict[str, Any]]:
        """Runs held in memory, then the store's newest; newest first."""
        live = {run: self._summary(view) for run, view in self.coordinator.engine.runs.items()}
        store = self.coordinator.store
        stored = await asyncio.to_thread(stored_runs, store.path, limit) if store is not None else []
        docs = list(live.values()) + [d for d in stored if d["id"] not in live]
        docs.sort(key=lambda d: d["submitted_at"], reverse=True)
        return docs[:limit]

    async def _complete(self, run: str) -> Journal | None:
        """The run's journal with its history from the store when the feed missed the beginning."""
        journal = self._journals.get(run)
        if journal is not None and journal.complete:
            return journal
        store = self.coordinator.store
        stored = await asyncio.to_thread(stored_run, store.path, run) if store is not None else None
        journal = self._journals.get(run)  # may have appeared while the store was read
        if journal is None:
            journal = self._journals[run] = Journal(complete=False)
        if journal.complete:
            return journal
        seen = {(r.task, r.new, r.attempt, r.at) for r in journal.transitions}
        earlier = [
            Change(str(t), str(o), str(n), int(a), g, str(c), float(at))
            for t, o, n, a, g, c, at in (stored.transitions if stored else [])
            if (t, n, a, at) not in seen
        ]
        rebuilt = Journal(complete=True, pending_tasks=journal.pending_tasks, pending_bars=journal.pending_bars)
        for row in sorted(earlier + journal.transitions, key=lambda r: r.at):
            rebuilt.record(row)
        rebuilt.energy, rebuilt.energy_total = journal.energy, journal.energy_total
        self._journals[run] = rebuilt
        return rebuilt

    async def run_snapshot(self, run: str) -> dict[str, Any] | None:
        """The run page's state now (``None``: no such run here or in the store)."""
        view = self.coordinator.engine.runs.get(run)  # type: ignore[call-overload]
        if view is None:
            store = self.coordinator.store
            stored = await asyncio.to_thread(stored_run, store.path, run) if store is not None else None
            return stored.snapshot if stored is not None else None
        journal = await self._complete(run)
        view = self.coordinator.engine.runs.get(run)  # type: ignore[call-overload]
        if view is None or journal is None:
            return None
        return {
            "run": self._summary(view),
            "tasks": task_rows(view),
            "bars": [bar_row(b) for b in journal.bars.values()],
            "now": time.time(),
        }

    async def task(self, run: str, task: str) -> dict[str, Any] | None:
        """One task's details, history and attempts (``None``: unknown)."""
        view = self.coordinator.engine.runs.get(run)  # type: ignore[call-overload]
        if view is not None:
            journal = await self._complete(run)
            tv = view.tasks.get(task)
            if tv is None or journal is None:
                return None
            history = [r for r in journal.transitions if r.task == task]
            return task_detail(tv, history, (b for b in journal.bars.values() if b.task == task))
        store = self.coordinator.store
        stored = await asyncio.to_thread(stored_run, store.path, run) if store is not None else None
        if stored is None or (task not in stored.specs and task not in stored.results):
            return None
        return stored_task_detail(stored, run, task)

    def agents(self) -> dict[str, Any]:
        now = time.time()
        return {
            "agents": [agent_doc(a, now=now) for a in self.coordinator.engine.agents.values()],
            "history": {agent: list(rows) for agent, rows in self._telemetry.items()},
            "now": now,
        }

    # -- the flush loop ----------------------------------------------------------

    async def flush_loop(self) -> None:
        """Send coalesced changes to open pages (a named task of the dashboard)."""
        while True:
            timeout = 2.0 if any(p.kind == "agents" for p in self._pages) else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            self._kicked = False
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self.flush(time.time())
            except Exception:  # a page must never take the feed down
                log.exception("dashboard feed: flush failed")

    def flush(self, now: float) -> None:
        runs = self.coordinator.engine.runs
        for run, pages in self._run_pages.items():
            journal = self._journals.get(run)
            view = runs.get(run)  # type: ignore[call-overload]
            if journal is None or view is None:
                continue
            if not (journal.pending_tasks or journal.pending_bars or run in self._dirty_runs):
                continue
            doc = {
                "run": self._summary(view),
                "tasks": [[name, *rest] for name, rest in journal.pending_tasks.items()],
                "bars": [bar_row(b) for b in journal.pending_bars.values()],
                "now": now,
            }
            journal.pending_tasks.clear()
            journal.pending_bars.clear()
            self._send(pages, "delta", _dumps(doc))
        if now - self._last_slow < SLOW_INTERVAL:
            for run in list(self._dirty_runs):
                if run in self._run_pages:
                    self._dirty_runs.discard(run)
            if self._dirty_runs or self._pending_samples:
                self._kick()  # the rest goes out with the next slow round
            return
        self._last_slow = now
        list_pages = [p for p in self._pages if p.kind == "runs"]
        if list_pages and self._dirty_runs:
            docs = [self._summary(runs[r]) for r in self._dirty_runs if r in runs]  # type: ignore[index]
            if docs:
                self._send(list_pages, "delta", _dumps({"runs": docs, "now": now}))
        self._dirty_runs.clear()
        agent_pages = [p for p in self._pages if p.kind == "agents"]
        if agent_pages:
            changed = []
            for agent in self.coordinator.engine.agents.values():
                doc = agent_doc(agent, now=now)
                doc.pop("seen_ago")
                if self._agents_sent.get(agent.id) != doc:
                    self._agents_sent[agent.id] = doc
                    changed.append(doc)
            if changed or self._pending_samples:
                self._send(
                    agent_pages, "delta", _dumps({"agents": changed, "samples": self._pending_samples, "now": now})
                )
        else:
            self._agents_sent.clear()
        self._pending_samples = []

    def _send(self, pages: Any, event: str, data: str) -> None:
        for page in pages:
            page.send(event, data)
            self.sent += 1
