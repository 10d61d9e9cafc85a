"""Pipelined publishing: many QoS 1 messages in flight, call order preserved.

Awaiting each PUBACK before sending the next message costs a broker round trip
per message. :class:`Publisher` hands each message to the transport at once
(``begin_publish``: call order is wire order) and tracks the acknowledgements
as futures, so they overlap. ``send`` applies backpressure once ``limit``
acknowledgements are pending.
"""

from __future__ import annotations

import asyncio
import logging

from dagon.protocol.transport._base import Transport

__all__ = ["Publisher"]

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, transport: Transport, *, limit: int = 1000) -> None:
        self._transport = transport
        self._limit = limit
        self._pending: set[asyncio.Future[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self.failures = 0

    async def send(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        expiry: int | None = None,
    ) -> None:
        """Start publishing; returns at once unless ``limit`` publishes are pending."""
        while len(self._pending) >= self._limit:
            self._room.clear()
            await self._room.wait()
        fut = self._transport.begin_publish(
            topic, payload, qos=qos, retain=retain, content_type=content_type, expiry=expiry
        )
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return
        self._pending.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self._pending.discard(task)
        if len(self._pending) < self._limit:
            self._room.set()
        if not task.cancelled() and task.exception() is not None:
            self.failures += 1
            log.warning("publish failed: %s", task.exception())

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Wait until every started publish has completed (or failed)."""
        while self._pending:
            await asyncio.wait(list(self._pending))

    def cancel(self) -> None:
        for task in self._pending:
            task.cancel()
