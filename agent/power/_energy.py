"""Energy per task: power integrated over the task's interval, shared among concurrent tasks by CPU.

Each power sample is the node's average power over the interval since the previous
sample, together with the node's busy CPU cores over that interval (psutil) and the
number of tasks running. A task that ran from ``s`` to ``f`` using ``cpu`` seconds
of CPU is taken to use ``r = cpu / (f - s)`` cores throughout, and is given, for
every slice of its interval, the fraction ``min(1, r / busy)`` of the power (its
share of the CPU in use); on an idle node (no CPU busy) the power is split evenly
among the running tasks. The part of the task after the newest sample uses the
newest sample's power. The shares of all tasks never exceed the node's power.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["EnergyLedger", "TaskEnergy"]

_IDLE_CORES = 0.02  # below this, the node counts as idle


@dataclass(frozen=True, slots=True)
class TaskEnergy:
    """Energy attributed to one task (``measured`` is ``False`` when any power was modelled)."""

    joules: float
    watts: float
    measured: bool
    source: str


@dataclass(frozen=True, slots=True)
class _Sample:
    start: float
    end: float
    watts: float
    busy: float
    running: int
    measured: bool
    source: str


class EnergyLedger:
    """A bounded history of power samples and the attribution computed from it.

    Args:
        capacity: samples kept; older parts of a very long task use the mean power of the kept ones.
    """

    def __init__(self, *, capacity: int = 4096) -> None:
        self._samples: deque[_Sample] = deque(maxlen=capacity)
        self._last_ts: float | None = None
        self.total_joules = 0.0  # node energy since the ledger started

    def add(self, ts: float, watts: float, *, busy_cores: float, running: int, measured: bool, source: str) -> None:
        """Record that the node drew ``watts`` on average since the previous sample (or since ``ts``)."""
        start = self._last_ts if self._last_ts is not None and self._last_ts < ts else ts
        self._samples.append(_Sample(start, ts, watts, max(0.0, busy_cores), running, measured, source))
        self.total_joules += watts * (ts - start)
        self._last_ts = ts

    @staticmethod
    def _share(rate: float, sample: _Sample) -> float:
        if sample.busy >= _IDLE_CORES:
            return min(1.0, rate / sample.busy)
        return 1.0 / max(1, sample.running)

    def attribute(self, started: float, finished: float, cpu_time: float) -> TaskEnergy | None:
        """Energy of a task that ran from ``started`` to ``finished`` using ``cpu_time`` CPU seconds."""
        if not self._samples or finished <= started:
            return None
        rate = max(0.0, cpu_time) / (finished - started)
        joules = 0.0
        covered = 0.0
        measured = True
        sources: set[str] = set()
        for sample in self._samples:
            overlap = min(sample.end, finished) - max(sample.start, started)
            if overlap <= 0:
                continue
            joules += sample.watts * self._share(rate, sample) * overlap
            covered += overlap
            measured &= sample.measured
            sources.add(sample.source)
        first, last = self._samples[0], self._samples[-1]
        after = finished - max(started, last.end)
        if after > 0:
            joules += last.watts * self._share(rate, last) * after
            covered += after
            measured &= last.measured
            sources.add(last.source)
        before = min(finished, first.start) - started
        if before > 0:  # older than the kept history
            mean = sum(s.watts * self._share(rate, s) for s in self._samples) / len(self._samples)
            joules += mean * before
        return TaskEnergy(joules, joules / (finished - started), measured, ",".join(sorted(sources)))
