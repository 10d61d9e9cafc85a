"""In-process transport: a hub with retained messages and Last Wills.

Semantics follow MQTT where dagon relies on them: retained messages are
delivered on subscribe, an empty retained payload clears the retained message,
a transport closed with ``abort=True`` (or by ``hub.kill``) publishes its Will.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

from dagon.protocol._errors import TransportError
from dagon.protocol.transport._base import Incoming, Will, topic_matches

__all__ = ["MemoryHub", "MemoryTransport"]


class MemoryHub:
    """The shared "broker" of a group of :class:`MemoryTransport` objects."""

    def __init__(self) -> None:
        self._clients: list[MemoryTransport] = []
        self._retained: dict[str, bytes] = {}
        self.published = 0

    def transport(self, *, will: Will | None = None, queue_size: int = 100_000) -> MemoryTransport:
        return MemoryTransport(self, will=will, queue_size=queue_size)

    def _deliver(self, topic: str, payload: bytes, retain: bool) -> None:
        self.published += 1
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        for client in self._clients:
            if any(topic_matches(f, topic) for f in client._filters):
                client._queue.put_nowait(Incoming(topic, payload, False))

    def kill(self, transport: MemoryTransport) -> None:
        """Drop a client as if its connection died (its Will is published)."""
        transport._close(publish_will=True)


class MemoryTransport:
    def __init__(self, hub: MemoryHub, *, will: Will | None, queue_size: int) -> None:
        self._hub = hub
        self._will = will
        self._filters: list[str] = []
        self._queue: asyncio.Queue[Incoming | None] = asyncio.Queue(queue_size)
        self._open = False

    async def __aenter__(self) -> Self:
        self._hub._clients.append(self)
        self._open = True
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close(publish_will=False)

    def _close(self, *, publish_will: bool) -> None:
        if not self._open:
            return
        self._open = False
        self._hub._clients.remove(self)
        self._queue.put_nowait(None)
        if publish_will and self._will is not None:
            self._hub._deliver(self._will.topic, self._will.payload, self._will.retain)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        expiry: int | None = None,
    ) -> None:
        if not self._open:
            raise TransportError("memory transport is closed")
        self._hub._deliver(topic, payload, retain)

    def begin_publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        expiry: int | None = None,  # not modelled: the in-memory hub lives as long as one test
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._open:
            fut.set_exception(TransportError("memory transport is closed"))
        else:
            self._hub._deliver(topic, payload, retain)
            fut.set_result(None)
        return fut

    async def wait_reconnect(self) -> None:
        """The in-memory hub never drops a live client: waits forever."""
        await asyncio.Event().wait()

    async def subscribe(self, *filters: str, qos: int = 1) -> None:
        for f in filters:
            if f not in self._filters:
                self._filters.append(f)
            for topic, payload in list(self._hub._retained.items()):
                if topic_matches(f, topic):
                    self._queue.put_nowait(Incoming(topic, payload, True))

    async def unsubscribe(self, *filters: str) -> None:
        for f in filters:
            if f in self._filters:
                self._filters.remove(f)

    async def messages(self) -> AsyncIterator[Incoming]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item
