"""Shared fixtures: a real Mosquitto, the embedded broker, the in-memory hub.

In CI (``CI=true``) a missing Mosquitto is a failure, never a skip: ``.ci/setup``
installs it. Every process started here is stopped by PID in a ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from _broker import MOSQUITTO_MISSING, Mosquitto, missing, mosquitto_binary

from dagon._embedded import EmbeddedBroker
from dagon.protocol.transport import MemoryHub

SLOW_CALLBACK = 1.0
"""Seconds a loop step may take before debug mode reports it. Test loops run in asyncio debug mode
(pyproject's ``asyncio_debug``); its default, 0.1 s, is load on a shared 2-core machine rather than a
bug, and tests that check the log for warnings must not trip over it. A full second still is a bug."""


class _TestLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.slow_callback_duration = SLOW_CALLBACK
        return loop


asyncio.set_event_loop_policy(_TestLoopPolicy())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that asks for the real broker is a real-component test whether or not
    # its author remembered the marker, so `-m "not mosquitto"` always works.
    for item in items:
        if "mosquitto" in getattr(item, "fixturenames", ()) and item.get_closest_marker("mosquitto") is None:
            item.add_marker(pytest.mark.mosquitto)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto 2 broker on a free loopback port, for one test.

    Yields an object with ``.url``, ``.port``, ``.pid``, ``.stop()``, ``.start()``
    and ``.restart()`` (same port). Missing binary: skip locally, fail in CI.
    """
    binary = mosquitto_binary()
    if binary is None:
        missing(MOSQUITTO_MISSING)
    broker = Mosquitto(binary=binary, workdir=tmp_path / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def embedded_broker() -> AsyncIterator[EmbeddedBroker]:
    """The embedded amqtt broker (MQTT 3.1.1 only) on a free loopback port."""
    async with EmbeddedBroker(port=0) as broker:
        yield broker


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix unique to this test (brokers may be shared or reused)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:60]
    return f"test/{name}-{os.urandom(3).hex()}"
