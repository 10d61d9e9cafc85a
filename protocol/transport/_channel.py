"""A typed channel: messages in and out of one participant, topics and encoding done once.

Call sites say *whom* a message is for (``to_agent``, ``to_coordinator``) and get
decoded envelopes back (``incoming``); building the topic, signing and encoding,
and pipelining the publish (:class:`~dagon.protocol.transport.Publisher`) happen
here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from dagon.protocol import topics
from dagon.protocol._codec import Codec, Envelope
from dagon.protocol._errors import ProtocolError
from dagon.protocol._messages import Message
from dagon.protocol.transport._base import Transport, topic_matches
from dagon.protocol.transport._publisher import Publisher

__all__ = ["Channel", "Received"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """One decoded message and the topic it arrived on."""

    topic: str
    envelope: Envelope


class Channel:
    """Sends typed messages to agents and coordinators and yields what arrives.

    Args:
        transport: an opened (or about to be opened) transport.
        codec: signs and encodes outgoing messages, verifies and decodes incoming ones.
        publisher: pipelines QoS 1 publishes (default: a new one on ``transport``).
    """

    def __init__(self, transport: Transport, codec: Codec, *, publisher: Publisher | None = None) -> None:
        self.transport = transport
        self.codec = codec
        self.publisher = publisher or Publisher(transport)

    def encode(self, message: Message, *, agent: str = "") -> bytes:
        """``message`` signed and encoded, addressed to ``agent`` when given (raises ProtocolError,
        e.g. over the size limit)."""
        return self.codec.encode(message, to=f"agent/{agent}" if agent else "")

    async def to_agent(self, agent: str, message: Message | bytes) -> None:
        """Send to ``agent``'s task topic (``bytes``: already encoded with ``encode(..., agent=agent)``).

        The message names ``agent`` inside its signed envelope: a copy published on another
        agent's topic is refused there.
        """
        payload = message if isinstance(message, bytes) else self.encode(message, agent=agent)
        await self.publisher.send(topics.agent_tasks(agent), payload)

    async def to_agent_control(self, agent: str, message: Message) -> None:
        """Send to ``agent``'s control topic (addressed like :meth:`to_agent`)."""
        await self.publisher.send(topics.agent_control(agent), self.encode(message, agent=agent))

    async def to_coordinator(self, coordinator: str, message: Message | bytes) -> None:
        """Send to a coordinator's inbox."""
        payload = message if isinstance(message, bytes) else self.codec.encode(message)
        await self.publisher.send(topics.coordinator_inbox(coordinator), payload)

    async def incoming(
        self, on_error: Callable[[str, ProtocolError, bytes], None], *, retained: tuple[str, ...] = ()
    ) -> AsyncIterator[Received]:
        """Every decoded message from the subscribed topics; one that cannot be decoded or
        verified goes to ``on_error`` (topic, error, payload). An empty payload on a topic matching a filter of
        ``retained`` is a cleared retained message and is skipped."""
        async for msg in self.transport.messages():
            if not msg.payload and any(topic_matches(f, msg.topic) for f in retained):
                continue
            try:
                envelope = self.codec.decode(msg.payload, limit=topics.payload_limit(msg.topic))
            except ProtocolError as exc:
                on_error(msg.topic, exc, msg.payload)
                continue
            yield Received(msg.topic, envelope)
