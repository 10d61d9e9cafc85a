"""The embedded MQTT broker (amqtt) for the zero-install default.

It runs in the caller's event loop, bound to 127.0.0.1 only, anonymous (it is
reachable from this machine alone). amqtt speaks MQTT 3.1.1, so clients of it
use ``protocol="3.1.1"``. Real deployments use a real broker (Mosquitto, EMQX).
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Any, Self

from dagon.protocol import TransportError

__all__ = ["EmbeddedBroker"]

# amqtt logs every connection at INFO; keep its own loggers quiet unless the
# application configured them. (Setting a third-party library's logger level
# here is deliberate: this module *is* the embedding point.)
for _name in ("amqtt", "transitions"):
    _logger = logging.getLogger(_name)
    if _logger.level == logging.NOTSET:
        _logger.setLevel(logging.WARNING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """``async with EmbeddedBroker(port=0) as broker: broker.url``.

    Args:
        port: TCP port on 127.0.0.1; 0 picks a free one.
    """

    def __init__(self, *, port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.port = port or _free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._broker: Any = None

    async def __aenter__(self) -> Self:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:
            raise TransportError(f"could not start the embedded MQTT broker on 127.0.0.1:{self.port}: {exc}") from exc
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
