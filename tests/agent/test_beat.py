"""How an agent paces its heartbeats around the telemetry samples that ride on them (``BeatTimer``),
on the real event loop and clock."""

from __future__ import annotations

import asyncio
import time

from dagon.agent._beat import RIDE_WAIT, BeatTimer
from dagon.protocol import AgentId, Telemetry


def sample(at: float) -> Telemetry:
    return Telemetry(agent=AgentId("a"), sampled_at=at, cpu_percent=1.0, memory_used=1, memory_total=2)


async def test_a_sample_goes_out_at_once_with_a_beat_and_the_newest_replaces_an_unsent_one() -> None:
    timer = BeatTimer(60.0)
    timer.ride(sample(1.0))
    timer.ride(sample(2.0))
    async with asyncio.timeout(5):  # not the 60 s interval
        got = await timer.wait()
    assert got is not None and got.sampled_at == 2.0
    timer.ride(sample(3.0))
    async with asyncio.timeout(5):
        again = await timer.wait()
    assert again is not None and again.sampled_at == 3.0


async def test_without_telemetry_a_beat_comes_every_interval_and_carries_nothing() -> None:
    timer = BeatTimer(0.2)
    start = time.monotonic()
    got = [await timer.wait() for _ in range(3)]
    assert got == [None, None, None]
    assert time.monotonic() - start >= 3 * 0.2


async def test_a_due_beat_waits_for_a_sample_about_to_be_taken_and_goes_with_it() -> None:
    expected = time.monotonic() + 1.1  # the sampler's next sample, just after the beat is due
    timer = BeatTimer(1.0, lambda: expected)  # patience: half the interval, 0.5 s (0.4 s to spare)

    async def sampler() -> None:
        await asyncio.sleep(1.1)
        timer.ride(sample(4.0))

    task = asyncio.create_task(sampler())
    got = await timer.wait()
    await task
    assert got is not None and got.sampled_at == 4.0  # one message, not a bare beat then a sample


async def test_a_beat_waits_no_longer_than_its_patience_for_a_sample_that_does_not_come() -> None:
    timer = BeatTimer(0.4, lambda: time.monotonic())  # "any moment now", for ever (a stuck sensor)
    start = time.monotonic()
    got = await timer.wait()
    elapsed = time.monotonic() - start
    assert got is None
    assert 0.4 + min(RIDE_WAIT, 0.4 / 2) <= elapsed  # waited its patience, then beat without it


async def test_a_sample_far_off_does_not_hold_the_beat() -> None:
    timer = BeatTimer(0.2, lambda: time.monotonic() + 3600)
    async with asyncio.timeout(0.2 + RIDE_WAIT):  # no patience spent on it
        assert await timer.wait() is None
