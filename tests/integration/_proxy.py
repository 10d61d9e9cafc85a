"""A loopback TCP proxy that can cut the clients behind it off their server.

Put it between one agent and the broker: ``cut()`` closes every proxied connection
and refuses new ones (accepted, then closed at once) until ``restore()`` — for the
agent the broker is unreachable, for the broker the agent's connection died, while
every other client of the broker is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["CuttableProxy"]


class CuttableProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target`` (an async context manager)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.cut_off = False
        self.refused = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Close every proxied connection and refuse new ones."""
        self.cut_off = True
        self._close_all()

    def restore(self) -> None:
        self.cut_off = False

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # no FIN handshake: the connection just dies
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        pipes = [asyncio.create_task(_pipe(reader, up_writer)), asyncio.create_task(_pipe(up_reader, writer))]
        self._pipes.update(pipes)
        # A connection handler that ends cancelled makes asyncio log an error: end it normally.
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.wait(pipes)
                self._pipes.difference_update(pipes)
                for w in (writer, up_writer):
                    self._writers.discard(w)
                    w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
