"""MQTT transport over aiomqtt — the only module that imports aiomqtt.

One background loop owns the connection: it connects, (re)subscribes, feeds
received messages into a bounded queue and, when the connection drops,
reconnects with capped, jittered exponential backoff. ``publish`` waits for a
live connection, so a broker restart delays messages instead of losing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from dagon.protocol._errors import ConfigError, TransportError
from dagon.protocol.transport._base import Incoming, Will
from dagon.protocol.transport._login import MqttAuth


def _import_paho() -> None:
    """Import paho without dnspython: paho loads ``dns.resolver`` (~10 MB) only for SRV
    lookups (``connect_srv``), which dagon never makes, whenever dnspython happens to be
    installed (pymongo brings it). Blocked just for paho's import; later imports of it work."""
    blocked = "dns.resolver" not in sys.modules
    if blocked:
        sys.modules["dns.resolver"] = None  # type: ignore[assignment]  # makes "import dns.resolver" fail
    try:
        import paho.mqtt.client  # noqa: F401
    finally:
        if blocked and sys.modules.get("dns.resolver", 0) is None:
            del sys.modules["dns.resolver"]


_import_paho()

import aiomqtt  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402
from aiomqtt.exceptions import MqttConnectError  # noqa: E402
from paho.mqtt.enums import MQTTErrorCode  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

__all__ = ["BrokerURL", "MqttTransport", "redact_url"]

log = logging.getLogger(__name__)

WAIT_NOTE_EVERY = 60.0  # seconds between two "still waiting for the broker" warnings


class _PackedOnce(Properties):
    """PUBLISH properties built once and never changed, packed once: paho packs a message's
    properties on every publish by probing all ~40 property names (``hasattr`` each), which
    profiled at ~40 µs a message on our 2-core machines."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")  # paho's __setattr__ only takes property names
        if packed is None:
            packed = self.__dict__["_packed"] = super().pack()  # type: ignore[no-untyped-call]
        return packed


class _DropPendingCallNotices(logging.Filter):
    """aiomqtt warns once more than ten publishes await their acknowledgement;
    dagon pipelines publishes on purpose (see ``Publisher``), so that is normal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


_client_log = logging.getLogger(f"{__name__}.aiomqtt")
_client_log.addFilter(_DropPendingCallNotices())


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """A parsed ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…`` URL."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ConfigError(
                f"broker URL {redact_url(url)!r} is not valid: use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
            )
        tls = parsed.scheme == "mqtts"
        try:
            port = parsed.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"broker URL {redact_url(url)!r} has an invalid port") from exc
        return cls(
            host=parsed.hostname,
            port=port,
            tls=tls,
            username=urllib.parse.unquote(parsed.username) if parsed.username else None,
            password=urllib.parse.unquote(parsed.password) if parsed.password else None,
        )

    def __str__(self) -> str:
        user = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def redact_url(url: str) -> str:
    """Hide a password in a broker URL before it is logged or shown."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def _forwarding_queue(target: asyncio.Queue[Incoming]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A queue class for aiomqtt whose ``put_nowait`` forwards into ``target``.

    aiomqtt's own message iterator costs a task and an ``asyncio.wait`` per
    message plus a second queue hop; forwarding from paho's callback delivers
    each message to our consumer in one step (a measurable share of the latency
    of every link of a dependency chain). A full ``target`` makes aiomqtt log and
    drop the message, as its own queue would.
    """

    class _Forward(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            raw: object = item.payload
            data = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
            target.put_nowait(Incoming(item.topic.value, data, bool(item.retain)))

    return _Forward


# Linux only; elsewhere (macOS) there is no per-socket switch and the broker option below is the remedy.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _acknowledge_at_once(client: aiomqtt.Client) -> None:
    """Make every read on ``client``'s socket re-arm TCP_QUICKACK.

    A broker with Nagle's algorithm on (Mosquitto's default, ``set_tcp_nodelay false``)
    holds a small packet back while its previous one is unacknowledged; Linux delays
    an ACK for up to 40 ms when the receiver has nothing to send back. A PUBACK
    followed by a PUBLISH to the same client therefore waited ~40 ms: a ping-pong
    through a stock Mosquitto took 49.6 ms at p50, 0.43 ms with this (0.35 ms with
    ``set_tcp_nodelay true``). TCP_QUICKACK is not sticky (the kernel leaves quick-ack
    mode on its own), so it is set again after each read: one cheap setsockopt per
    wake-up of the reader, never per message.
    """
    if _TCP_QUICKACK is None:
        return
    paho_client = client._client  # aiomqtt's reader calls paho's loop_read on each wake-up
    read = paho_client.loop_read

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        rc = read(max_packets)
        sock = paho_client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket included
            with contextlib.suppress(OSError):  # closing under our feet: nothing to acknowledge
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return rc

    paho_client.loop_read = loop_read  # type: ignore[method-assign]


class MqttTransport:
    """A reconnecting MQTT client.

    Args:
        url: broker URL (``mqtt://`` or ``mqtts://``).
        client_id: MQTT client identifier (stable for agents and coordinators).
        will: Last Will published by the broker if this client dies.
        protocol: ``"5"`` (default) or ``"3.1.1"`` (for brokers without MQTT 5,
            like the embedded amqtt); content types need MQTT 5.
        connect_timeout: how long the first connection may take before
            ``__aenter__`` fails.
        keepalive: MQTT keepalive in seconds (also bounds Last Will latency).
        queue_size: bound of the received-message queue (backpressure).
        max_backoff: cap of the reconnect backoff in seconds.
        tls_context: TLS settings to use as they are (overrides ``auth``'s files).
        auth: TLS files and credentials (see :class:`MqttAuth`); the URL's
            username/password win over ``auth``'s.
        session_expiry: MQTT 5 Session Expiry Interval in seconds (0: the session ends with
            the connection). With a stable ``client_id``, a broker keeps the session — its
            subscriptions and the QoS 1 messages published to them — this long after a
            connection drops, and the transport resumes it on reconnect (clean start only on
            its very first connection). Ignored for MQTT 3.1.1 (always a clean session).
        will_delay: MQTT 5 Will Delay Interval in seconds: the broker publishes the Last
            Will only if the client has not come back within it (0: at once).
        wait_for_broker: a broker that cannot be reached at the first connection is waited
            for (capped backoff, a warning at once and then each minute) instead of failing
            ``__aenter__`` — services starting in any order at boot. A broker that answers and
            refuses the connection still fails at once.
        resume_session: the first connection resumes the session an earlier process with this
            ``client_id`` left (MQTT 5, with ``session_expiry``): QoS 1 messages sent to it while no
            process ran are delivered. For a service that is one logical client across restarts
            (the standalone coordinator: a run submitted while it restarts is not lost).
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        will: Will | None = None,
        protocol: str = "5",
        connect_timeout: float = 10.0,
        keepalive: int = 30,
        queue_size: int = 100_000,
        max_backoff: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
        auth: MqttAuth | None = None,
        session_expiry: int = 0,
        will_delay: int = 0,
        wait_for_broker: bool = False,
        resume_session: bool = False,
    ) -> None:
        self.url = BrokerURL.parse(url)
        self.wait_for_broker = wait_for_broker
        if not 0 <= session_expiry <= 0xFFFFFFFF or not 0 <= will_delay <= 0xFFFFFFFF:
            raise ConfigError(
                f"session_expiry and will_delay must be 0 or more seconds, got {session_expiry} and {will_delay}"
            )
        self.session_expiry = session_expiry
        self.will_delay = will_delay
        # Set after the first connection: later ones resume the session. With resume_session the
        # first one does too — what was queued for an earlier process with this client id is wanted.
        self._session_started = resume_session and session_expiry > 0
        auth = auth or MqttAuth()
        if auth.uses_tls_files and not self.url.tls:
            raise ConfigError(f"TLS files are configured but the broker URL {self.url} is not mqtts://; use mqtts://")
        if tls_context is None and auth.uses_tls_files:
            tls_context = auth.tls_context()
        self._username = self.url.username or auth.username
        self._password = self.url.password if self.url.username else auth.password
        if protocol not in ("5", "3.1.1"):
            raise ConfigError(f"MQTT protocol must be '5' or '3.1.1', got {protocol!r}")
        if not client_id:
            raise ConfigError("an MQTT client id is required")
        self.client_id = client_id
        self.protocol = protocol
        self._will = will
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._max_backoff = max_backoff
        self._tls_context = tls_context
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue(queue_size)
        self._filters: dict[str, int] = {}
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._lost: asyncio.Future[None] | None = None  # resolves when the current connection ends
        self._reconnected = asyncio.Event()  # replaced after each reconnect (see wait_reconnect)
        self._first: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._props: dict[tuple[str | None, int | None], Properties] = {}
        self.reconnects = 0

    # -- lifecycle ---------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        v5 = self.protocol == "5"
        will = None
        if self._will is not None:
            will_props = None
            if v5 and self.will_delay:
                will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
                will_props.WillDelayInterval = self.will_delay
            will = aiomqtt.Will(self._will.topic, self._will.payload, self._will.qos, self._will.retain, will_props)
        connect_props = None
        if v5 and self.session_expiry:
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_props.SessionExpiryInterval = self.session_expiry
        tls_context = self._tls_context
        if self.url.tls and tls_context is None:
            tls_context = ssl.create_default_context()
        client = aiomqtt.Client(
            self.url.host,
            self.url.port,
            username=self._username,
            password=self._password,
            identifier=self.client_id,
            logger=_client_log,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=will,
            keepalive=self._keepalive,
            timeout=self._connect_timeout,
            tls_context=tls_context,
            max_inflight_messages=1000,
            queue_type=_forwarding_queue(self._queue),
            # Small control messages must not wait for Nagle + delayed ACK (~40 ms each way).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            # A new paho client per connection: "first only" would start clean every time.
            # The transport's first connection starts clean (no stale queue from a previous
            # process); reconnects resume the session the broker kept (session_expiry).
            clean_start=not self._session_started if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=connect_props,
        )
        _acknowledge_at_once(client)
        return client

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._runner = asyncio.create_task(self._connection_loop(), name=f"mqtt-{self.client_id}")
        try:
            async with asyncio.timeout(None if self.wait_for_broker else self._connect_timeout + 1):
                await self._first
        except BaseException as exc:
            await self._stop()
            if isinstance(exc, TimeoutError):
                raise TransportError(
                    f"could not connect to the MQTT broker at {self.url} within {self._connect_timeout:.0f} s;"
                    " is it running and reachable? (set --broker or DAGON_BROKER)"
                ) from None
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        self._closing = True
        # Wake every publish waiting for a connection or an ack: they fail with
        # TransportError instead of hanging on a transport that is going away.
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._connected.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        self._connected.clear()

    async def _connection_loop(self) -> None:
        assert self._first is not None
        delay = 0.2
        began, next_note = time.monotonic(), 0.0
        client = self._new_client()
        while not self._closing:
            try:
                async with client:
                    self._client = client
                    self._lost = asyncio.get_running_loop().create_future()
                    if self._filters:
                        await client.subscribe([(f, q) for f, q in self._filters.items()])
                    self._session_started = True
                    self._connected.set()
                    if not self._first.done():
                        self._first.set_result(None)
                        if next_note:
                            log.warning("connected to MQTT broker %s after waiting %.0f s", self.url,
                                        time.monotonic() - began)  # fmt: skip
                    else:
                        log.info("reconnected to MQTT broker %s", self.url)
                        fired, self._reconnected = self._reconnected, asyncio.Event()
                        fired.set()
                    delay = 0.2
                    # Messages reach self._queue straight from paho's callback (see
                    # _forwarding_queue); here we only wait for the connection to end.
                    # asyncio.wait, not await: aiomqtt's future must not be cancelled.
                    disconnected = client._disconnected
                    await asyncio.wait([disconnected])
                    cause = disconnected.exception()
                    raise aiomqtt.MqttError(f"connection lost: {cause}" if cause else "disconnected")
            except aiomqtt.MqttError as exc:
                self._connected.clear()
                self._client = None
                if self._lost is not None and not self._lost.done():
                    self._lost.set_result(None)
                sleep = random.uniform(delay / 2, delay)
                if not self._first.done():
                    # A broker that answered and refused (credentials, client id) will not change
                    # its mind: only an unreachable one is waited for.
                    if not self.wait_for_broker or isinstance(exc, MqttConnectError):
                        self._first.set_exception(
                            TransportError(
                                f"could not connect to the MQTT broker at {self.url}: {exc}; is it running and"
                                " reachable? (its URL comes from --broker, DAGON_BROKER or the configuration file)"
                            )
                        )
                        return
                    waited = time.monotonic() - began
                    if waited >= next_note:  # at once, then once a minute
                        next_note += WAIT_NOTE_EVERY
                        log.warning(
                            "MQTT broker %s not reachable%s (%s); waiting for it, retrying with backoff up to"
                            " %.0f s (set DAGON_WAIT_FOR_BROKER=0 to fail at once instead)",
                            self.url, f" after {waited:.0f} s" if waited >= 1 else "", exc, self._max_backoff,
                        )  # fmt: skip
                else:
                    self.reconnects += 1
                    log.warning("lost MQTT broker %s (%s); reconnecting in %.1f s", self.url, exc, sleep)
                await asyncio.sleep(sleep)
                delay = min(delay * 2, self._max_backoff)
                client = self._new_client()

    # -- operations --------------------------------------------------------

    async def _live_client(self) -> aiomqtt.Client:
        """The connected client, waiting for a reconnect if needed (callers bound the wait)."""
        if self._runner is None:
            raise TransportError("the MQTT transport is not open (use 'async with')")
        while True:
            await self._connected.wait()
            if self._closing:
                raise TransportError("the MQTT transport was closed")
            if self._client is not None:
                return self._client
            self._connected.clear()

    async def wait_reconnect(self) -> None:
        """Return after the next successful reconnect (a restarted broker may have
        lost retained messages: owners of retained state publish it again)."""
        await self._reconnected.wait()

    def _properties(self, content_type: str | None, expiry: int | None = None) -> Properties | None:
        if (content_type is None and expiry is None) or self.protocol != "5":
            return None
        key = (content_type, expiry)
        props = self._props.get(key)
        if props is None:
            # Built once per content type and expiry: paho only reads it when packing.
            props = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if content_type is not None:
                props.ContentType = content_type
            if expiry is not None:
                props.MessageExpiryInterval = expiry
            self._props[key] = props
        return props

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
        """Hand the message to the socket now (if connected); the future resolves on the broker's ack.

        The synchronous hand-off keeps call order and saves the event-loop turns a
        task per publish would cost before any byte leaves (latency on every link
        of a dependency chain). Without a live connection, or if the connection
        dies before the ack, the message is published again once reconnected
        (at-least-once; receivers deduplicate by message id).
        """
        loop = asyncio.get_running_loop()
        client, lost = self._client, self._lost
        props = self._properties(content_type, expiry)
        if client is not None and lost is not None and not lost.done() and self._connected.is_set():
            # aiomqtt's own publish() defers the hand-off behind an await, so this goes to
            # paho directly and reuses aiomqtt's ack bookkeeping (private, stable in
            # aiomqtt 2.x; the dependency is pinned below 3 and tests cover this path).
            paho_client = client._client
            info = paho_client.publish(topic, payload, qos, retain, props)
            if info.rc == paho.MQTT_ERR_SUCCESS:
                if qos == 0 or info.is_published():
                    done: asyncio.Future[None] = loop.create_future()
                    done.set_result(None)
                    return done
                acked = asyncio.Event()
                client._pending_publishes[info.mid] = acked
                return asyncio.ensure_future(self._await_ack(acked, lost, topic, payload, qos, retain, props))
        return asyncio.ensure_future(self._publish_retrying(topic, payload, qos, retain, props))

    async def _await_ack(
        self,
        acked: asyncio.Event,
        lost: asyncio.Future[None],
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Properties | None,
    ) -> None:
        waiter: asyncio.Future[Any] = asyncio.ensure_future(acked.wait())
        try:
            await asyncio.wait([waiter, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if acked.is_set():
            return
        await self._publish_retrying(topic, payload, qos, retain, props)

    async def _publish_retrying(
        self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None
    ) -> None:
        while True:
            if self._closing:
                raise TransportError(f"publish to {topic} failed: the transport is closing")
            client = await self._live_client()
            lost = self._lost
            assert lost is not None
            # A PUBACK that will never come (the connection died after the message left)
            # must not hang the caller: race it against the end of this connection.
            sending = asyncio.ensure_future(
                client.publish(topic, payload, qos=qos, retain=retain, properties=props, timeout=math.inf)
            )
            try:
                await asyncio.wait([sending, lost], return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                sending.cancel()
                raise
            if sending.done() and not sending.cancelled() and sending.exception() is None:
                return
            sending.cancel()
            self._connected.clear()
            await asyncio.sleep(0.05)

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
        if self._runner is None:
            raise TransportError("the MQTT transport is not open (use 'async with')")
        fut = self.begin_publish(topic, payload, qos=qos, retain=retain, content_type=content_type, expiry=expiry)
        try:
            await fut
        except asyncio.CancelledError:
            fut.cancel()
            raise

    async def subscribe(self, *filters: str, qos: int = 1) -> None:
        for f in filters:
            self._filters[f] = qos
        if self._client is not None and self._connected.is_set():
            try:
                await self._client.subscribe([(f, qos) for f in filters])
            except aiomqtt.MqttError as exc:
                log.warning("subscribe failed (%s); it is retried on reconnect", exc)

    async def unsubscribe(self, *filters: str) -> None:
        for f in filters:
            self._filters.pop(f, None)
        if self._client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.unsubscribe(list(filters))

    async def messages(self) -> AsyncIterator[Incoming]:
        while True:
            yield await self._queue.get()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up right now (reconnecting otherwise)."""
        return self._connected.is_set()
