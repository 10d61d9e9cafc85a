"""The coordinator's public output: JSON run status, task results, events and agent status.

Everything here is for *any* MQTT subscriber (schemas in docs/mqtt-topics.md).
It never blocks scheduling: documents go into a bounded queue that one loop
publishes with pipelined QoS 1 acknowledgements.

Retained documents do not pile up on the broker: when a finished run leaves the
coordinator's memory (:mod:`dagon.core._retention`) its per-task results are cleared
(an empty retained message each, sent when nothing else waits) and its final status —
counts, cause, times: the run's summary — is retained again with ``results_retained``
false. Over MQTT 5 every retained document also carries a message expiry interval
(``result_expiry``), so what a coordinator that died never cleared goes too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from dagon.core._agentstatus import AgentBoard
from dagon.core._placement import AgentView
from dagon.core._results import RunEvent, run_status_doc
from dagon.core._states import RunState
from dagon.core._views import RunView
from dagon.protocol import CONTENT_TYPE_JSON, SCHEMA_EVENTS, SCHEMA_RUN_STATUS, AgentId, RunId, encode_public, topics
from dagon.protocol.transport import Publisher, Transport

__all__ = ["DEFAULT_RESULT_EXPIRY", "PublicOutput"]

log = logging.getLogger(__name__)

STATUS_INTERVAL: Final = 0.5  # seconds between progress status publishes of a running run
EVENTS_PER_MESSAGE: Final = 500
DEFAULT_RESULT_EXPIRY: Final = 7 * 86400  # seconds a retained public document lives on an MQTT 5 broker
_CLEARS: Final = ("", b"", False)  # queue marker: result topics are waiting to be cleared


class PublicOutput:
    """Batches and publishes the public documents of one coordinator.

    Args:
        transport: where to publish.
        coordinator_id: named in every run status.
        results: publish task results and events (run status is always published).
        wake: asks the coordinator for another cycle (throttled statuses are due).
        agents: the engine's agents, whose status documents it publishes (see ``core/_agentstatus.py``).
        key_of: the key each agent is admitted with (named by fingerprint in its document).
        result_expiry: MQTT 5 message expiry of retained documents, in seconds (None: never).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        coordinator_id: str,
        results: bool,
        wake: Callable[[], None],
        agents: Mapping[AgentId, AgentView] | None = None,
        key_of: Callable[[str], bytes] | None = None,
        result_expiry: int | None = DEFAULT_RESULT_EXPIRY,
    ) -> None:
        self._coordinator = coordinator_id
        self._agents = agents
        self.board = AgentBoard(coordinator=coordinator_id, key_of=key_of)
        self.results = results
        self.result_expiry = result_expiry
        self._runs_prefix = topics.run_status(RunId("-")).removesuffix("-/status")  # dagon/v1/runs/
        self._clears: deque[tuple[RunId, list[str]]] = deque()  # runs whose retained results go
        self._cleared = asyncio.Event()  # set while no clears wait
        self._cleared.set()
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
        agents_waiting = False
        if self._agents is not None:
            docs, agents_waiting = self.board.due(self._agents, now)
            for topic, payload in docs:
                self._put(topic, payload, retain=True)
        if not self._dirty and not agents_waiting:
            return
        still_dirty = set()
        for run in self._dirty:
            view = runs.get(run)
            if view is None:
                continue
            finished = view.state is not RunState.RUNNING
            if finished or now - self._status_sent.get(run, 0.0) >= STATUS_INTERVAL:
                self._status_sent[run] = now
                doc = run_status_doc(view, coordinator=self._coordinator, results_retained=self.results)
                self._put(topics.run_status(run), encode_public(doc), retain=True)
                if finished:
                    self._status_sent.pop(run, None)
            else:
                still_dirty.add(run)
        self._dirty = still_dirty
        if (still_dirty or agents_waiting) and self._timer is None:
            # One pending wake-up at most: the throttled statuses go out even if nothing else happens.
            self._timer = asyncio.get_running_loop().call_later(STATUS_INTERVAL, self._timer_fired)

    def run_left(self, view: RunView) -> None:
        """A finished run leaves memory: clear its retained task results and retain its final status,
        saying the results are gone (the run store keeps them: ``dagon status``)."""
        self._dirty.discard(view.id)
        if self.results:
            self._clears.append((view.id, list(view.tasks)))
            self._cleared.clear()
            try:
                self._queue.put_nowait(_CLEARS)  # wakes the publishing loop
            except asyncio.QueueFull:
                pass  # it is busy: it clears once the queue is empty
        doc = run_status_doc(view, coordinator=self._coordinator, results_retained=False)
        self._put(topics.run_status(view.id), encode_public(doc), retain=True)

    def run_ended_before(self, run: RunId, doc: dict[str, Any]) -> None:
        """Retain again the final status of a run that ended in an earlier life of this coordinator
        (``doc``: :func:`~dagon.core._results.stored_status_doc`)."""
        self._put(topics.run_status(run), encode_public(doc), retain=True)

    @property
    def clears_pending(self) -> int:
        """Retained results still to clear."""
        return sum(len(names) for _, names in self._clears)

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

    def forget_agents(self) -> None:
        """Remove this coordinator's retained agent documents (it is stopping: nobody keeps them true)."""
        self._agents = None
        for topic in self.board.published():
            self._put(topic, b"", retain=True)

    def _put(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self._queue.put_nowait((topic, payload, retain))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("public output queue full: %d documents dropped (is the broker keeping up?)", self.dropped)

    # -- publishing -----------------------------------------------------------

    async def publish_loop(self) -> None:
        """The publishing loop (a named task in the coordinator's group).

        Clearing retained results waits for an empty queue: live documents go first, and a
        100,000-task run's clears never fill the bounded queue (nor drop live documents)."""
        send = self._publisher.send
        while True:
            if self._clears and self._queue.empty():
                run, names = self._clears[0]
                await send(topics.run_task_result(run, names.pop()), b"", retain=True)
                if not names:
                    self._clears.popleft()
                    if not self._clears:
                        self._cleared.set()
                continue
            topic, payload, retain = await self._queue.get()
            try:
                if topic:
                    # Run documents expire; an agent's status stays as long as the agent (its owner clears it).
                    expiry = self.result_expiry if retain and topic.startswith(self._runs_prefix) else None
                    await send(topic, payload, retain=retain, content_type=CONTENT_TYPE_JSON, expiry=expiry)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        await self._queue.join()
        await self._cleared.wait()
        await self._publisher.drain()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._publisher.cancel()
