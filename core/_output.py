"""The coordinator's public output: JSON run status, task results and events.

Everything here is for *any* MQTT subscriber (schemas in docs/mqtt-topics.md).
It never blocks scheduling: documents go into a bounded queue that one loop
publishes with pipelined QoS 1 acknowledgements.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final

from dagon.core._engine import RunView
from dagon.core._results import RunEvent, run_status_doc
from dagon.core._states import RunState
from dagon.protocol import CONTENT_TYPE_JSON, SCHEMA_EVENTS, SCHEMA_RUN_STATUS, RunId, encode_public, topics
from dagon.protocol.transport import Publisher, Transport

__all__ = ["PublicOutput"]

log = logging.getLogger(__name__)

STATUS_INTERVAL: Final = 0.5  # seconds between progress status publishes of a running run
EVENTS_PER_MESSAGE: Final = 500


class PublicOutput:
    """Batches and publishes the public documents of one coordinator.

    Args:
        transport: where to publish.
        coordinator_id: named in every run status.
        results: publish task results and events (run status is always published).
        wake: asks the coordinator for another cycle (throttled statuses are due).
    """

    def __init__(self, transport: Transport, *, coordinator_id: str, results: bool, wake: Callable[[], None]) -> None:
        self._coordinator = coordinator_id
        self.results = results
        self._wake = wake
        self._queue: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(maxsize=100_000)
        self._publisher = Publisher(transport, limit=2000)
        self._events: dict[RunId, list[RunEvent]] = {}
        self._status_sent: dict[RunId, float] = {}
        self._dirty: set[RunId] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0

    # -- recording ------------------------------------------------------------

    def touch(self, run: RunId) -> None:
        """The run changed: its status document is due (throttled)."""
        self._dirty.add(run)

    def event(self, event: RunEvent) -> None:
        if not self.results:
            return
        run = RunId(event.run)
        pending = self._events.setdefault(run, [])
        pending.append(event)
        if len(pending) >= EVENTS_PER_MESSAGE:
            self._flush_events(run)

    def task_result(self, run: RunId, task: str, payload: bytes) -> None:
        if self.results:
            self._put(topics.run_task_result(run, task), payload, retain=True)

    def rejected(self, run: RunId, cause: str) -> None:
        doc = {"schema": SCHEMA_RUN_STATUS, "run": run, "state": "rejected", "cause": cause}
        self._put(topics.run_status(run), encode_public(doc), retain=True)

    # -- flushing -------------------------------------------------------------

    def flush(self, runs: Mapping[RunId, RunView], now: float) -> None:
        """Send pending events and the statuses that are due."""
        for run in list(self._events):
            self._flush_events(run)
        if not self._dirty:
            return
        still_dirty = set()
        for run in self._dirty:
            view = runs.get(run)
            if view is None:
                continue
            finished = view.state is not RunState.RUNNING
            if finished or now - self._status_sent.get(run, 0.0) >= STATUS_INTERVAL:
                self._status_sent[run] = now
                self._put(
                    topics.run_status(run),
                    encode_public(run_status_doc(view, coordinator=self._coordinator)),
                    retain=True,
                )
                if finished:
                    self._status_sent.pop(run, None)
            else:
                still_dirty.add(run)
        self._dirty = still_dirty
        if still_dirty and self._timer is None:
            # One pending wake-up at most: the throttled statuses go out even if nothing else happens.
            self._timer = asyncio.get_running_loop().call_later(STATUS_INTERVAL, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake()

    def _flush_events(self, run: RunId) -> None:
        # Bounded messages, encoded as they fill: a fan-out can make 100,000 tasks
        # change state in one cycle, and their events should not all be alive at once.
        events = self._events.pop(run, None)
        if events:
            doc = {"schema": SCHEMA_EVENTS, "run": run, "events": [e.to_doc() for e in events]}
            self._put(topics.run_events(run), encode_public(doc), retain=False)

    def _put(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self._queue.put_nowait((topic, payload, retain))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("public output queue full: %d documents dropped (is the broker keeping up?)", self.dropped)

    # -- publishing -----------------------------------------------------------

    async def run(self) -> None:
        """The publishing loop (a named task in the coordinator's group)."""
        while True:
            topic, payload, retain = await self._queue.get()
            try:
                await self._publisher.send(topic, payload, retain=retain, content_type=CONTENT_TYPE_JSON)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        await self._queue.join()
        await self._publisher.drain()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._publisher.cancel()
