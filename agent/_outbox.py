"""Coalesced reporting of started and finished tasks to their coordinators.

Reports are queued per coordinator (the assignment's ``reply_to``). The outbox
loop waits for the first pending report, then takes everything that piled up
meanwhile and publishes at most one ``TasksStarted`` and one ``TasksFinished``
per coordinator: batches grow with load and nothing waits when idle.

Invariant: a task's ``StartedTask`` is queued before its ``TaskResult`` and a
flush sends a coordinator's started batch before its finished batch, so no
coordinator ever sees a result before the start of the same attempt. A start
whose result is in the same flush is not sent at all: the result carries the
start time and directory, and a short task then costs one signed message
instead of two (the coordinator accepts dispatched → finished).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from dagon.protocol import (
    AgentId,
    Codec,
    Message,
    ProtocolError,
    StartedTask,
    TaskRef,
    TaskResult,
    TasksFinished,
    TasksStarted,
    topics,
)
from dagon.protocol.transport import Publisher

if TYPE_CHECKING:
    from dagon.agent._spool import ResultSpool

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

_R = TypeVar("_R", StartedTask, TaskResult)
START_GRACE = 0.002  # seconds a start report may wait for its task's result


class Outbox:
    """Queues reports and publishes them in coalesced batches.

    Args:
        agent: this agent's id (the ``agent`` field of every report).
        codec: encodes the reports.
        publisher: pipelined publisher on the agent's transport.
        spool: where results are made durable before they are sent (one transaction
            per flush); ``None``: results are only sent.
    """

    def __init__(self, *, agent: AgentId, codec: Codec, publisher: Publisher, spool: ResultSpool | None = None) -> None:
        self._agent = agent
        self._codec = codec
        self._publisher = publisher
        self._spool = spool
        self._flushing: list[TaskResult] = []  # results of the flush in progress (being spooled or sent)
        self._started: defaultdict[str, list[StartedTask]] = defaultdict(list)
        self._finished: defaultdict[str, list[TaskResult]] = defaultdict(list)
        self._wake = asyncio.Event()
        self._result_ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self.batches = 0

    @property
    def depth(self) -> int:
        """Reports queued and not yet handed to the transport."""
        return sum(map(len, self._started.values())) + sum(map(len, self._finished.values()))

    def started(self, coordinator: str, item: StartedTask) -> None:
        """Queue a start report for ``coordinator``."""
        self._started[coordinator].append(item)
        self._wake.set()

    def finished(self, coordinator: str, item: TaskResult) -> None:
        """Queue a result for ``coordinator``."""
        self._finished[coordinator].append(item)
        self._wake.set()
        self._result_ready.set()

    async def publish_loop(self) -> None:
        """Publish queued reports as they come, forever (the agent's outbox loop)."""
        while True:
            await self._wake.wait()
            if not self._result_ready.is_set():
                # Only starts are waiting: give a short task a moment to finish, so its start is
                # replaced by its result (one signed message instead of two). Results never wait.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(START_GRACE):
                        await self._result_ready.wait()
            await self.flush()

    async def flush(self) -> None:
        """Hand every queued report to the publisher now."""
        async with self._lock:
            self._wake.clear()
            self._result_ready.clear()
            started, self._started = self._started, defaultdict(list)
            finished, self._finished = self._finished, defaultdict(list)
            self._flushing = [r for results in finished.values() for r in results]
            if self._spool is not None and self._flushing:
                # Durable before it leaves: a result the broker took is never only in memory.
                await self._spool.put([(c, r) for c, results in finished.items() for r in results])
            for coordinator in started.keys() | finished.keys():
                inbox = topics.coordinator_inbox(coordinator)
                starts = started.get(coordinator)
                if starts and coordinator in finished:
                    done = {(r.run, r.task, r.attempt) for r in finished[coordinator]}
                    starts = [s for s in starts if (s.run, s.task, s.attempt) not in done]
                if starts:
                    await self._send(inbox, starts, self._started_message)
                if finished.get(coordinator):
                    await self._send(inbox, finished[coordinator], self._finished_message)
            self._flushing = []

    def holding(self) -> list[TaskRef]:
        """Attempts whose results are queued here or being spooled (not yet in the spool)."""
        refs = [TaskRef(r.run, r.task, r.attempt) for results in self._finished.values() for r in results]
        refs.extend(TaskRef(r.run, r.task, r.attempt) for r in self._flushing)
        return refs

    def result_payloads(self, results: Sequence[TaskResult]) -> list[bytes]:
        """Freshly encoded ``TasksFinished`` messages carrying ``results`` (new message ids: a resend
        is a new message, which the coordinator handles and acknowledges again)."""
        return self._payloads(results, self._finished_message)

    def _started_message(self, items: Sequence[StartedTask]) -> Message:
        return TasksStarted(agent=self._agent, tasks=tuple(items))

    def _finished_message(self, items: Sequence[TaskResult]) -> Message:
        return TasksFinished(agent=self._agent, results=tuple(items))

    async def _send(self, inbox: str, items: Sequence[_R], build: Callable[[Sequence[_R]], Message]) -> None:
        for payload in self._payloads(items, build):
            await self._publisher.send(inbox, payload)
            self.batches += 1

    def _payloads(self, items: Sequence[_R], build: Callable[[Sequence[_R]], Message]) -> list[bytes]:
        try:
            return [self._codec.encode(build(items))]
        except ProtocolError as exc:
            if exc.reason != "oversize":
                log.exception("cannot encode a report of %d item(s); dropped", len(items))
                return []
            if len(items) > 1:  # split until every part fits
                half = len(items) // 2
                return self._payloads(items[:half], build) + self._payloads(items[half:], build)
            item = items[0]
            if not isinstance(item, TaskResult):  # pragma: no cover - a start report is tiny
                log.error("a start report is over the message size limit")
                return []
            # One result too big on its own (huge manifest): send it without the bulky parts.
            slim = dataclasses.replace(
                item,
                outputs=(),
                value=None,
                stderr_tail=item.stderr_tail[-1024:],
                error=" ".join(filter(None, [item.error, f"[report truncated: {exc}]"])),
            )
            log.warning(
                "result of %s/%s is over the message size limit; sent without its manifest", item.run, item.task
            )
            return [self._codec.encode(TasksFinished(agent=self._agent, results=(slim,)))]
