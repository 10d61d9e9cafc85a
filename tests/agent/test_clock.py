"""The NTP-style arithmetic of :class:`CoordinatorClock` on given times (the real exchange with a
coordinator is in tests/integration/test_clock_skew.py)."""

from __future__ import annotations

import pytest

from dagon.agent._clock import ANSWER_TIMEOUT, CoordinatorClock, measurement_clock
from dagon.protocol import AgentId, TimeAnswer


class Ticks:
    """This side's clock, set by the test."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def test_offset_and_round_trip_with_asymmetric_delays() -> None:
    now = Ticks(1000.0)
    clock = CoordinatorClock(AgentId("pi"), now=now)
    query = clock.query("main")  # t0 = 1000 here; the coordinator is 300 s ahead
    # 0.2 s to get there, 0.1 s spent answering, 0.05 s back: t1 = 1300.2, t2 = 1300.3, t3 = 1000.35
    now.at = 1000.35
    sample = clock.answer(TimeAnswer(nonce=query.nonce, received=1300.2, sent=1300.3))
    assert sample is not None
    assert sample.delay == pytest.approx(0.25)
    assert abs(sample.offset - 300.0) <= sample.delay / 2  # within half the round trip, as promised
    assert "behind coordinator main" in sample.describe()
    assert clock.answer(TimeAnswer(nonce=query.nonce, received=1300.2, sent=1300.3)) is None  # once only
    assert clock.answer(TimeAnswer(nonce="someone-elses", received=1.0, sent=2.0)) is None
    # An assignment stamped 25 s ago by the coordinator's clock is at least that old here.
    age = clock.age("main", sent=1300.0 + 0.35 - 25.0)
    assert age is not None and 24.5 < age <= 25.0
    assert clock.age("other", sent=0.0) is None  # never measured: nothing can be said


def test_a_query_is_sent_once_until_answered_or_lost_and_again_every_ten_minutes() -> None:
    now = Ticks(0.0)
    clock = CoordinatorClock(AgentId("pi"), now=now)
    assert clock.due("main")
    clock.query("main")
    assert not clock.due("main")  # awaiting its answer
    now.at = ANSWER_TIMEOUT + 1
    assert clock.due("main")  # lost (e.g. the coordinator restarted): ask again
    clock.answer(TimeAnswer(nonce=clock.query("main").nonce, received=now.at, sent=now.at))
    assert not clock.due("main")
    now.at += 600
    assert clock.due("main")


def test_the_test_hook_shifts_only_the_measurement_clock() -> None:
    shifted = measurement_clock({"DAGON_TEST_CLOCK_OFFSET": "-300"})
    plain = measurement_clock({})
    assert 299 < plain() - shifted() < 301
