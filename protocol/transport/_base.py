"""The communication seam: a small publish/subscribe interface.

Two implementations: :class:`~dagon.protocol.transport.MqttTransport` (real
broker, through aiomqtt) and :class:`~dagon.protocol.transport.MemoryTransport`
(in-process hub for fast tests). Payloads are always bytes produced by the real
codec, so tests over the memory transport exercise the wire format too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

__all__ = ["Incoming", "Transport", "Will", "topic_matches"]


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Will:
    """Last Will: published by the broker when the connection dies uncleanly."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


class Transport(Protocol):
    """What coordinator, agents and clients need from a message broker."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

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
        """Publish; with QoS 1 returns once the broker has acknowledged.

        ``expiry``: MQTT 5 message expiry interval in seconds — the broker drops the message
        (also a retained one) that long after it was published. Ignored over MQTT 3.1.1.
        """
        ...

    def begin_publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        expiry: int | None = None,
    ) -> asyncio.Future[None]:
        """Start publishing right now (call order is wire order); the future resolves on the ack."""
        ...

    async def subscribe(self, *filters: str, qos: int = 1) -> None:
        """Subscribe (kept across reconnects)."""
        ...

    async def unsubscribe(self, *filters: str) -> None: ...

    async def wait_reconnect(self) -> None:
        """Return after the next reconnect to the broker (subscriptions already restored)."""
        ...

    def messages(self) -> AsyncIterator[Incoming]:
        """Every message received on the subscriptions, in arrival order."""
        ...


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest; wildcards at the
    first level never match ``$``-topics such as ``$SYS``)."""
    if topic.startswith("$") and filter_[:1] in ("+", "#"):
        return False
    fparts = filter_.split("/")
    tparts = topic.split("/")
    for i, f in enumerate(fparts):
        if f == "#":
            return True
        if i >= len(tparts):
            return False
        if f != "+" and f != tparts[i]:
            return False
    return len(fparts) == len(tparts)
