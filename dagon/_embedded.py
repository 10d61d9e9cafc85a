"""The embedded MQTT broker (amqtt) for the zero-install default.

It runs in the caller's event loop, bound to 127.0.0.1 only and anonymous: it is
reachable from this machine alone. amqtt 0.12 speaks MQTT 3.1.1 only (a CONNECT
for MQTT 5 is refused with "Unsupported protocol version"), so its clients use
``MqttTransport(..., protocol="3.1.1")`` and get no MQTT 5 properties (content
type). Retained messages, QoS 1 and Last Will work. It is much slower than
Mosquitto (a few thousand QoS 1 messages per second, sharing the loop with its
clients); real deployments use a real broker (Mosquitto, EMQX).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import TracebackType
from typing import Any, Final, Self

from dagon.protocol import TransportError

__all__ = ["EMBEDDED_PROTOCOL", "EmbeddedBroker"]

#: The MQTT protocol version to pass to ``MqttTransport`` for this broker.
EMBEDDED_PROTOCOL: Final = "3.1.1"

log = logging.getLogger(__name__)

# amqtt logs every connection and state change at INFO (and its state machine
# library, transitions, too). Library code never configures logging, but this
# module *is* the point where dagon embeds amqtt, so it sets amqtt's own loggers
# (not the root logger, no handlers) to WARNING — only when the application has
# not set a level on them already.
for _name in ("amqtt", "transitions"):
    _logger = logging.getLogger(_name)
    if _logger.level == logging.NOTSET:
        _logger.setLevel(logging.WARNING)

_START_ATTEMPTS: Final = 3


def _free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An MQTT 3.1.1 broker in this event loop: ``async with EmbeddedBroker() as broker``.

    Args:
        port: TCP port on 127.0.0.1; ``0`` (default) picks a free one.

    Attributes:
        port: the port it listens on (final once entered).
        url: ``mqtt://127.0.0.1:PORT``.
    """

    def __init__(self, *, port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535 (0 picks a free one), got {port}")
        self._fixed_port = port != 0
        self.port = port or _free_port()
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            # An explicit plugin map replaces amqtt's defaults ($SYS publisher, …):
            # only anonymous access, which is safe because we listen on loopback.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def __aenter__(self) -> Self:
        if self._broker is not None:
            raise RuntimeError("this EmbeddedBroker is already running")
        from amqtt.broker import Broker  # imported lazily: only the embedded default needs it

        for attempt in range(1, _START_ATTEMPTS + 1):
            broker = Broker(self._config())
            try:
                await broker.start()
            except Exception as exc:
                # A picked port can be taken between _free_port() and the bind: pick again.
                if self._fixed_port or attempt == _START_ATTEMPTS:
                    raise TransportError(
                        f"could not start the embedded MQTT broker on 127.0.0.1:{self.port}: {exc}"
                        + ("" if self._fixed_port else " (no free port found)")
                    ) from exc
                log.debug("embedded broker could not bind 127.0.0.1:%d (%s); trying another port", self.port, exc)
                self.port = _free_port()
            else:
                self._broker = broker
                break
        log.debug("embedded MQTT broker listening on %s", self.url)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        # Shielded: a cancelled caller must still close the listening socket and
        # stop amqtt's background tasks, or they leak into the loop.
        stopping = asyncio.ensure_future(broker.shutdown())
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            await stopping
            raise
