"""Sending spooled results again until their coordinator acknowledges them.

A result is re-sent, oldest first and batched per coordinator:

* at agent start (results a previous process spooled and never saw acknowledged),
* after every reconnect to the broker (a restarted broker without persistence, or a
  connection cut mid-flight, may have lost it or the acknowledgement),
* when it stays unacknowledged for ``resend_after`` seconds, then after twice that, up to
  ``resend_max`` (capped backoff: a coordinator that is away is not flooded),
* at once when its assignment is delivered again (the coordinator asks for the attempt
  it does not know finished).

A resend is a freshly encoded message (new id, fresh timestamp): the coordinator
handles it — stores it, or fences it as stale — and acknowledges it either way. While
the broker has not yet taken the previous resend of a result (the connection is down),
it is not queued again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from dagon.agent._outbox import Outbox
from dagon.agent._spool import ResultSpool, SpoolEntry
from dagon.protocol import ResultStatus, TaskRef, topics
from dagon.protocol.transport import Transport

__all__ = ["Redelivery", "drop_undeliverable"]

log = logging.getLogger(__name__)

BATCH = 200  # results per resent message (split further if over the size limit)


class Redelivery:
    """The agent's resend loop over its :class:`ResultSpool`.

    Args:
        spool: the results to deliver.
        outbox: encodes them (same splitting of oversize batches as first sends).
        transport: publishes them.
        resend_max: cap of the per-result backoff in seconds.
        max_age: seconds after which an unacknowledged result is dropped (logged); 0 = never.
    """

    def __init__(
        self, *, spool: ResultSpool, outbox: Outbox, transport: Transport, resend_max: float = 600.0,
        max_age: float = 0.0,
    ) -> None:  # fmt: skip
        self._spool = spool
        self._outbox = outbox
        self._transport = transport
        self._resend_max = max(resend_max, spool.resend_after)
        self._max_age = max_age
        self._wake = asyncio.Event()
        self._everything = True  # the first pass (agent start) sends all that was spooled before
        self.resent = 0

    def reconnected(self) -> None:
        """The broker is back: send every unacknowledged result again."""
        self._everything = True
        self._wake.set()

    def now(self, ref: TaskRef) -> None:
        """Send ``ref``'s result again right away (its assignment came again)."""
        entry = self._spool.get(ref)
        if entry is not None:
            entry.due = 0.0
            self._wake.set()

    async def resend_loop(self) -> None:
        """Resend due results forever (one of the agent's loops)."""
        while True:
            # New entries are due resend_after from now: never sleep longer than that.
            timeout = min(self._next_due() - time.monotonic(), self._spool.resend_after)
            if self._everything:
                timeout = 0.0
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            self._wake.clear()
            everything, self._everything = self._everything, False
            self._resend(everything)
            await asyncio.sleep(0.05)  # coalesce bursts of reasons to resend

    def _next_due(self) -> float:
        entries = self._spool.entries()
        return min((e.due for e in entries), default=time.monotonic() + 3600.0)

    def _resend(self, everything: bool) -> None:
        now, wall = time.monotonic(), time.time()
        due: defaultdict[str, list[SpoolEntry]] = defaultdict(list)
        for entry in self._spool.entries():
            if self._max_age and wall - entry.spooled_at > self._max_age:
                self._spool.drop(entry, f"unacknowledged for more than {self._max_age:.0f} s")
                continue
            if entry.inflight is not None and not entry.inflight.done():
                continue  # the broker has not taken the previous copy yet
            if everything or entry.due <= now:
                due[entry.coordinator].append(entry)
        for coordinator, entries in due.items():
            inbox = topics.coordinator_inbox(coordinator)
            for i in range(0, len(entries), BATCH):
                batch = entries[i : i + BATCH]
                for payload in self._outbox.result_payloads([e.result for e in batch]):
                    fut = self._transport.begin_publish(inbox, payload)
                    fut.add_done_callback(_log_failure)
                    for entry in batch:
                        entry.inflight = fut
                for entry in batch:
                    entry.due = now + entry.backoff
                    entry.backoff = min(entry.backoff * 2, self._resend_max)
            self.resent += len(entries)
            log.info("re-sent %d unacknowledged result(s) to coordinator %s", len(entries), coordinator)


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a re-sent result was not published: %s", fut.exception())


def drop_undeliverable(spool: ResultSpool, agent: str, which: Callable[[str], bool], why: str) -> None:
    """Drop the spooled results addressed to a coordinator ``which`` says can never acknowledge them;
    a warning names the finished ones lost (cancelled attempts go quietly)."""
    lost = []
    for entry in spool.entries():
        if which(entry.coordinator):
            cancelled = entry.result.status is ResultStatus.CANCELLED
            spool.drop(entry, why, quiet=True)
            if not cancelled:
                lost.append(f"{entry.result.run}/{entry.result.task}")
    if lost:
        logging.getLogger("dagon.agent._agent").warning(  # the agent's own log, where this was always said
            "agent %s: %d finished result(s) were never acknowledged as stored and are dropped (%s): %s;"
            " if their run did not record them, 'dagon resume RUN' runs them again",
            agent, len(lost), why, ", ".join(lost[:10]) + (" …" if len(lost) > 10 else ""),
        )  # fmt: skip
