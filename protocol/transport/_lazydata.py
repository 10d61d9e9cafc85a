"""A data server that costs nothing until it is asked for data.

An agent must announce its data server's URL from the start, but most agents at
the edge sit idle most of the time, and the HTTP server (aiohttp) is a quarter of
an idle agent's memory. :class:`LazyDataServer` binds the listening socket at
once and watches it; the first connection waiting on it loads the real
:class:`~dagon.protocol.transport._dataplane.DataServer` onto that same socket,
which then accepts it (the client waits in the backlog for the ~0.1 s that takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from dagon.protocol._errors import TransportError
from dagon.protocol.transport._datatypes import ServerStats, server_url

if TYPE_CHECKING:
    from dagon.protocol.transport._dataplane import Authorize, DataServer, Locate

__all__ = ["LazyDataServer"]

log = logging.getLogger(__name__)


class LazyDataServer:
    """Same arguments and use as ``DataServer`` (``async with``, ``url``, ``stats``)."""

    def __init__(
        self,
        *,
        authorize: Authorize,
        locate: Locate,
        host: str = "127.0.0.1",
        port: int = 0,
        uploads: bool = False,
        max_transfers: int = 16,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "authorize": authorize, "locate": locate, "host": host, "port": port, "uploads": uploads,
            "max_transfers": max_transfers, "tls": tls,
        }  # fmt: skip
        self._host = host
        self._port = port
        self._tls = tls
        self._sock: socket.socket | None = None
        self._server: DataServer | None = None
        self._loading: asyncio.Task[None] | None = None
        self._idle_stats = ServerStats()
        self.port = 0

    @property
    def url(self) -> str:
        return server_url(self._host, self.port, tls=self._tls is not None)

    @property
    def loaded(self) -> bool:
        return self._server is not None

    @property
    def stats(self) -> ServerStats:
        return self._server.stats if self._server is not None else self._idle_stats

    async def __aenter__(self) -> LazyDataServer:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            sock = socket.create_server((self._host, self._port), family=family, backlog=128)
        except OSError as exc:
            raise TransportError(f"the data server cannot listen on {self._host}:{self._port}: {exc}") from None
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        asyncio.get_running_loop().add_reader(sock.fileno(), self._first_connection)
        log.info("data server on %s (loaded on first use)", self.url)
        return self

    def _first_connection(self) -> None:
        assert self._sock is not None
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._loading = asyncio.ensure_future(self._load())

    async def _load(self) -> None:
        from dagon.protocol.transport._dataplane import DataServer

        server = DataServer(**self._options, sock=self._sock)
        try:
            await server.__aenter__()
        except Exception:
            log.exception("the data server on %s could not start; outputs here cannot be pulled", self.url)
            return
        self._server = server

    async def __aexit__(self, *exc: object) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loading is None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
        else:
            with contextlib.suppress(Exception):
                await self._loading
        if self._server is not None:
            await self._server.__aexit__(*exc)  # closes the socket it served on
            self._idle_stats = self._server.stats  # still readable after the end
            self._server = None
        with contextlib.suppress(OSError):
            sock.close()
