"""``mqtt://`` sensor sources on the agent's own broker connection.

Sensor tasks open topic filters here; the agent subscribes on the first and unsubscribes
after the last, and its receive loop hands every message on a non-``dagon/`` topic to
:meth:`TopicFeed.feed` before decoding anything (sensor payloads are not dagon messages).
Queues are bounded: a sensor flooding the broker drops its own oldest messages, never the
agent's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from dagon.protocol import topics
from dagon.protocol.transport import Transport, topic_matches

__all__ = ["TopicFeed"]

QUEUE_SIZE: Final = 1000


class TopicFeed:
    """Reference-counted subscriptions with one bounded queue per open."""

    def __init__(self, transport: Transport, *, queue_size: int = QUEUE_SIZE) -> None:
        self._transport = transport
        self._queue_size = queue_size
        self._open: dict[str, list[asyncio.Queue[tuple[str, bytes]]]] = {}
        self.dropped = 0

    async def open(self, topic: str) -> asyncio.Queue[tuple[str, bytes]]:
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(self._queue_size)
        first = topic not in self._open
        self._open.setdefault(topic, []).append(queue)
        if first:
            try:
                await self._transport.subscribe(topic, qos=0)
            except BaseException:
                self._open.pop(topic, None)
                raise
        return queue

    async def close(self, topic: str, queue: asyncio.Queue[tuple[str, bytes]]) -> None:
        queues = self._open.get(topic, [])
        if queue in queues:
            queues.remove(queue)
        if not queues and self._open.pop(topic, None) is not None:
            with contextlib.suppress(Exception):  # the connection may be gone; the subscription goes with it
                await self._transport.unsubscribe(topic)

    def feed(self, topic: str, payload: bytes, *, retained: bool = False) -> bool:
        """Deliver a message to the open filters it matches; False when none (or a dagon topic).

        A retained message (a sensor's last value from before the task started) is claimed but not
        delivered: a capture records what the sensor says during its window.
        """
        if topics.is_dagon_topic(topic):
            return False  # the agent's own traffic is never a sensor reading, whatever the filter
        matched = False
        for filter_, queues in self._open.items():
            if topic_matches(filter_, topic):
                matched = True
                if retained:
                    continue
                for queue in queues:
                    if queue.full():
                        with contextlib.suppress(asyncio.QueueEmpty):
                            queue.get_nowait()
                        self.dropped += 1
                    queue.put_nowait((topic, payload))
        return matched
