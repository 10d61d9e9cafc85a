"""Scratch garbage collection by reference counting, and scratch footprints.

Sans-IO bookkeeping of the engine. For every task of a run it counts the
distinct tasks of the same run that read its outputs through ``workflow://``
references. When a consumer *succeeds* it releases each producer it read; the
producer whose last consumer succeeded is deleted from its agent's scratch
(:class:`DeleteScratch` command), unless it is kept:

* declared outputs (``Task.keep``) and checkpoints (``Task.checkpoint``);
* tasks nobody reads (final outputs: the user wants them);
* every task of a run submitted with ``keep_scratch``;
* producers read by a ``map_over`` template (its expanded tasks are created at
  run time) or linked by another run still running (meta-workflows).

Only success releases: a consumer waiting to retry, failed for good or never
run keeps what it would read, so nothing a pending or retrying attempt needs is
ever deleted; those leftovers go with ``dagon gc`` once the run is finished.

Footprint: the bytes of each succeeded attempt's output manifest count on its
agent until deleted; the peak per agent is kept per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dagon.core._events import DeleteScratch
from dagon.protocol import RunId, TaskName, TaskRef

if TYPE_CHECKING:
    from dagon.core._views import RunView, TaskView

__all__ = ["ScratchGC"]


@dataclass(slots=True)
class _RunGC:
    keep_scratch: bool
    peak: dict[str, int]  # agent -> peak bytes (the run view's scratch_peak)
    remaining: dict[str, int] = field(default_factory=dict)  # producer -> consumers not yet succeeded
    readers: dict[str, frozenset[str]] = field(default_factory=dict)  # consumer -> producers it reads
    pinned: set[str] = field(default_factory=set)  # producers never deleted (map_over sources)
    usage: dict[str, int] = field(default_factory=dict)  # agent -> bytes now
    sizes: dict[str, int] = field(default_factory=dict)  # task -> bytes of its succeeded attempt
    deleted: set[str] = field(default_factory=set)


class ScratchGC:
    """Reference counts of ``workflow://`` consumers, per run."""

    def __init__(self) -> None:
        self._runs: dict[RunId, _RunGC] = {}

    def submitted(self, run: RunView, *, keep_scratch: bool) -> None:
        state = _RunGC(keep_scratch=keep_scratch, peak=run.scratch_peak)
        own = ("", run.workflow.name)
        for name in run.graph.order:
            task = run.workflow[name]
            producers = frozenset(r.task for r in run.graph.refs_of(name) if r.workflow in own)
            mapped = task.map_reference() if task.map_over else None
            if mapped is not None or task.map_over:
                state.pinned.update(producers)
                if mapped is not None:
                    state.pinned.add(mapped.task)
                continue
            if producers:
                state.readers[name] = producers
                for producer in producers:
                    state.remaining[producer] = state.remaining.get(producer, 0) + 1
        self._runs[run.id] = state

    def forget(self, run: RunId) -> None:
        self._runs.pop(run, None)

    def peak(self, run: RunId) -> dict[str, int]:
        """Peak scratch bytes (output manifests) per agent for the run so far."""
        state = self._runs.get(run)
        return dict(state.peak) if state is not None else {}

    def remaining(self, run: RunId, task: str) -> int:
        state = self._runs.get(run)
        return state.remaining.get(task, 0) if state is not None else 0

    def succeeded(self, view: TaskView, size: int, linked: Callable[[TaskView], bool]) -> list[DeleteScratch]:
        """Account a succeeded attempt; returns the deletions its success allows.

        ``linked(producer)`` tells whether another running run still reads it.
        """
        state = self._runs.get(view.run.id)
        if state is None or view.agent is None:
            return []
        name = view.name
        state.sizes[name] = size
        agent = view.agent
        now = state.usage[agent] = state.usage.get(agent, 0) + size
        peak = view.run.scratch_peak
        if now > peak.get(agent, 0):
            peak[agent] = now
        out: list[DeleteScratch] = []
        for producer in sorted(state.readers.get(name, ())):
            left = state.remaining[producer] = state.remaining[producer] - 1
            if left == 0:
                cmd = self._delete(view.run, state, producer, linked)
                if cmd is not None:
                    out.append(cmd)
        return out

    def _delete(
        self, run: RunView, state: _RunGC, name: str, linked: Callable[[TaskView], bool]
    ) -> DeleteScratch | None:
        view = run.tasks.get(name)
        if view is None or view.agent is None or name in state.deleted:
            return None
        spec = view.spec
        if state.keep_scratch or spec.keep or spec.checkpoint or name in state.pinned or linked(view):
            return None
        state.deleted.add(name)
        state.usage[view.agent] = state.usage.get(view.agent, 0) - state.sizes.get(name, 0)
        return DeleteScratch(view.agent, TaskRef(run.id, TaskName(name), view.attempt))
