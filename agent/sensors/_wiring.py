"""The agent's built-in device runtimes, wired to its broker connection."""

from __future__ import annotations

import asyncio
from typing import Final

from dagon.agent.runtimes import Runtime
from dagon.agent.sensors._runtime import ActuatorRuntime, SensorRuntime
from dagon.agent.sensors._topic_feed import TopicFeed
from dagon.protocol import CONTENT_TYPE_JSON
from dagon.protocol.transport import Transport

__all__ = ["DEVICE_RUNTIMES", "device_runtimes_for"]

DEVICE_RUNTIMES: Final = ("sensor", "actuator")


def device_runtimes_for(agent: str, transport: Transport, feed: TopicFeed) -> list[Runtime]:
    """``sensor`` and ``actuator`` runtimes publishing through ``transport``."""

    def live(topic: str, payload: bytes) -> None:
        if not getattr(transport, "connected", True):
            return  # a live reading is dropped while offline (readings.jsonl keeps it), never queued
        future = transport.begin_publish(topic, payload, qos=0, content_type=CONTENT_TYPE_JSON)
        future.add_done_callback(_consume)

    async def acked(topic: str, payload: bytes) -> None:
        await transport.publish(topic, payload, qos=1)

    return [SensorRuntime(agent=agent, publish=live, feed=feed), ActuatorRuntime(publish_acked=acked)]


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed courtesy publish is not an unhandled error
