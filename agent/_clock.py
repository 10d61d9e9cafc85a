"""This machine's clock against a coordinator's, measured NTP-style (issue 18: clock skew).

A Raspberry Pi has no real-time clock: it boots with the time it last saved and is right only once
NTP answered. Signed messages that make an agent act are refused outside a freshness window
(``DEFAULT_FRESHNESS``, ±120 s), so a clock that is off must be seen — by ``dagon-agent doctor``
before the service is installed, and by the agent in its log.

The measurement: the querier sends a signed :class:`~dagon.protocol.TimeQuery` with a random nonce
at ``t0`` (its clock); the coordinator notes ``t1`` when it arrives and ``t2`` when its signed
:class:`~dagon.protocol.TimeAnswer` leaves; the querier receives it at ``t3``. Then

* ``offset = ((t1 - t0) + (t2 - t3)) / 2`` — how far the coordinator's clock is ahead of ours;
* ``delay = (t3 - t0) - (t2 - t1)`` — the round trip through the broker; the offset is right to
  within ``delay / 2`` whatever the two one-way delays are.

The answer is fresh because it echoes a nonce only this querier knows, not by its timestamp (a clock
far off must be measurable), and it is signed by an enrolled coordinator key.

``DAGON_TEST_CLOCK_OFFSET`` (seconds, tests only) shifts the clock *this measurement* reads — a
stand-in for a machine whose clock is off, since tests cannot change the system clock. Nothing else
in the agent reads it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from dagon.protocol import DEFAULT_FRESHNESS, AgentId, TimeAnswer, TimeQuery

__all__ = [
    "CLOCK_WARN",
    "LATE_ASSIGNMENT",
    "MEASURE_EVERY",
    "TEST_OFFSET_ENV",
    "ClockSample",
    "CoordinatorClock",
    "measurement_clock",
    "say",
]

CLOCK_WARN: Final = 2.0  # seconds of offset that deserve a look (NTP keeps clocks within milliseconds)
TEST_OFFSET_ENV: Final = "DAGON_TEST_CLOCK_OFFSET"
PENDING_MAX: Final = 64  # queries awaiting an answer (older ones are forgotten)
MEASURE_EVERY: Final = 600.0  # seconds between measurements against one coordinator
ANSWER_TIMEOUT: Final = 30.0  # seconds after which an unanswered query counts as lost
# An assignment older than this when it arrives is refused: the coordinator gives up an attempt its
# agent does not list as held once a heartbeat arrives more than 30 s (its lost_assignment_grace)
# after the dispatch; the 10 s between the two absorb a heartbeat's transit and the offset's error.
LATE_ASSIGNMENT: Final = 20.0


def measurement_clock(env: Mapping[str, str] = os.environ) -> Callable[[], float]:
    """``time.time``, shifted by ``DAGON_TEST_CLOCK_OFFSET`` seconds when that is set (tests only)."""
    raw = env.get(TEST_OFFSET_ENV, "").strip()
    if not raw:
        return time.time
    shift = float(raw)
    return lambda: time.time() + shift


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One measurement: the coordinator's clock minus ours, and the round trip it was measured over."""

    coordinator: str
    offset: float
    delay: float
    at: float  # our clock when the answer arrived

    def describe(self) -> str:
        if abs(self.offset) < 0.0005 + self.delay / 2:
            where = "in step with"
        else:
            where = f"{abs(self.offset):.3f} s {'behind' if self.offset > 0 else 'ahead of'}"
        bound = f"±{self.delay / 2:.3f} s, round trip {self.delay * 1000:.0f} ms"
        return f"{where} coordinator {self.coordinator} ({bound})"


class CoordinatorClock:
    """Queries sent and the samples their answers gave (one per coordinator, the latest)."""

    def __init__(self, agent: AgentId, *, now: Callable[[], float] | None = None) -> None:
        self.agent = agent
        self.now = now or measurement_clock()
        self._pending: dict[str, tuple[str, float]] = {}  # nonce -> (coordinator, t0)
        self.samples: dict[str, ClockSample] = {}

    def query(self, coordinator: str) -> TimeQuery:
        """A query to send to ``coordinator`` now (its send time is taken here)."""
        nonce = os.urandom(12).hex()
        self._pending[nonce] = (coordinator, self.now())
        while len(self._pending) > PENDING_MAX:
            del self._pending[next(iter(self._pending))]
        return TimeQuery(agent=self.agent, nonce=nonce)

    def answer(self, message: TimeAnswer) -> ClockSample | None:
        """The sample an answer gives (None: not an answer to a query of ours, or answered already)."""
        t3 = self.now()
        asked = self._pending.pop(message.nonce, None)
        if asked is None:
            return None
        coordinator, t0 = asked
        t1, t2 = message.received, message.sent
        sample = ClockSample(coordinator, ((t1 - t0) + (t2 - t3)) / 2, max(0.0, (t3 - t0) - (t2 - t1)), t3)
        self.samples[coordinator] = sample
        return sample

    def age(self, coordinator: str, sent: float) -> float | None:
        """How long ago, at least, ``coordinator`` sent a message stamped ``sent`` by its clock
        (None: its clock was not measured yet, so nothing can be said)."""
        sample = self.samples.get(coordinator)
        if sample is None:
            return None
        return self.now() + sample.offset - sent - sample.delay / 2

    def due(self, coordinator: str, *, every: float = MEASURE_EVERY) -> bool:
        """Whether ``coordinator``'s clock should be measured (never yet, or not for ``every`` seconds)
        and no query to it is awaiting its answer."""
        now = self.now()
        if any(c == coordinator and now - t0 < ANSWER_TIMEOUT for c, t0 in self._pending.values()):
            return False  # asked already (a query unanswered for ANSWER_TIMEOUT was lost: ask again)
        sample = self.samples.get(coordinator)
        return sample is None or now - sample.at >= every


def say(sample: ClockSample, agent: str, log: logging.Logger) -> None:
    """Log a measurement: INFO when the clocks agree within :data:`CLOCK_WARN`, else a WARNING
    (signed tasks from outside ±``DEFAULT_FRESHNESS`` are refused: the cause is named)."""
    if abs(sample.offset) <= CLOCK_WARN:
        log.info("agent %s: clock %s", agent, sample.describe())
        return
    refused = (
        f"; signed tasks (valid ±{DEFAULT_FRESHNESS:.0f} s) are refused until the clock is set (is NTP running?)"
        if abs(sample.offset) > DEFAULT_FRESHNESS
        else "; set the clock (NTP) before it drifts further"
    )
    log.warning("agent %s: clock %s%s", agent, sample.describe(), refused)
