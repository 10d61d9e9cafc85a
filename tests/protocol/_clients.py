"""Helpers for transport tests: a client in a child process that dies for real."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["doomed_client"]

_CHILD = """
import asyncio, sys
from dagon.protocol.transport import MqttTransport, Will

async def main(url, protocol, topic):
    will = Will(topic, b"died", retain=True)
    async with MqttTransport(url, client_id="doomed-" + topic.replace("/", "-"), will=will, protocol=protocol):
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:]))
"""


@asynccontextmanager
async def doomed_client(url: str, *, will_topic: str, protocol: str = "5") -> AsyncIterator[int]:
    """Run an MQTT client with a Last Will in a child process; yields its PID once connected.

    The caller kills it (SIGKILL: the socket dies without DISCONNECT, so the broker
    must publish the Will). The child is always killed and reaped on exit.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, url, protocol, will_topic, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            line = await proc.stdout.readline()
        assert line.strip() == b"ready", f"child client did not connect (said {line!r})"
        yield proc.pid
    finally:
        if proc.returncode is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await proc.communicate()
