"""Whose signatures the coordinator accepts: enrolled agent keys and client keys.

* Agents are admitted only when enrolled. An agent id is enrolled by a line of
  ``known_agents`` binding it to one key (``dagon keys trust-agent ID agent.pub``, or
  ``dagon agents approve ID`` after comparing the fingerprint the agent announced); the
  agent key of the coordinator's own ``DAGON_HOME`` is enrolled for every id (one user
  on one machine needs no setup). There is no trust on first use: a stranger's announce
  is refused before anything in it is decoded, and leaves nothing behind.
* Reports from agent ``X`` (status, heartbeats, started/finished, acks) must come
  from sender ``agent/X`` and be signed by the key enrolled for ``X``.
* Run submissions, cancellations and resumes must be signed by a client key: the
  coordinator's own (same user, same machine) or one enrolled for a client.

The key is chosen from the key id alone (:meth:`CoordinatorTrust.key`), so the
signature is checked over the raw bytes before the envelope is decoded; the
sender/message binding is checked afterwards (:meth:`CoordinatorTrust.admit`).
An unknown key id, and a client key, re-read the enrolments at most once a second
(an operator may have just approved an agent, or run ``dagon keys trust-client`` —
or removed a client key); a flood of strangers costs two ``stat`` calls a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dagon.protocol import (
    AgentId,
    CancelRun,
    Envelope,
    KeyRing,
    LogsRequest,
    ProtocolError,
    ResumeRun,
    SubmitRun,
    fingerprint,
    key_fingerprint,
    key_id,
    parse_public_key,
    raw_public_key,
)

__all__ = ["CoordinatorTrust"]

log = logging.getLogger(__name__)

OnPin = Callable[[AgentId, bytes], None]
Reload = Callable[[], Mapping[str, bytes] | None]
ReloadClients = Callable[[], Iterable[Ed25519PublicKey] | None]
RELOAD_EVERY = 1.0  # seconds between re-reads of the enrolment file for unknown keys


class _Pin(NamedTuple):
    raw: bytes
    kid: str
    key: Ed25519PublicKey

    @classmethod
    def of(cls, raw: bytes) -> _Pin:
        return cls(raw, key_id(raw), parse_public_key(raw))


class CoordinatorTrust:
    """The coordinator's :class:`~dagon.protocol.Trust` policy.

    Args:
        clients: keys allowed to submit, cancel and resume runs.
        pinned: agent id → raw public key enrolled for it (``known_agents``).
        agent_keys: keys enrolled for any agent id (the agent key of the coordinator's own home).
        reload: returns the current enrolments (``None``: unchanged); called for an unknown key
            at most once every :data:`RELOAD_EVERY` seconds.
        reload_clients: returns the current client keys (``None``: unchanged); called like
            ``reload``, and for a client key too (a removed one is refused from then on).
        on_pin: called with each newly enrolled key (to persist it).
        pins_file: where enrolments live, named in error messages.
    """

    def __init__(
        self,
        *,
        clients: Iterable[Ed25519PublicKey],
        pinned: Mapping[str, bytes] | None = None,
        agent_keys: Iterable[Ed25519PublicKey] = (),
        reload: Reload | None = None,
        reload_clients: ReloadClients | None = None,
        on_pin: OnPin | None = None,
        pins_file: str = "the coordinator's known_agents file",
    ) -> None:
        self._clients = KeyRing(clients, what="client")
        self._any_id = {key_id(k): k for k in agent_keys}
        self._pins: dict[str, _Pin] = {}
        self._by_kid: dict[str, Ed25519PublicKey] = {}
        self._set_pins(pinned or {})
        self._reload = reload
        self._reload_clients = reload_clients
        self._reloaded = 0.0
        self._on_pin = on_pin
        self._pins_file = pins_file
        self._holders: dict[str, bytes] = {}  # agent -> the home key it signs with (keys enrolled for any id)

    def _set_pins(self, pinned: Mapping[str, bytes]) -> None:
        pins = {agent: _Pin.of(raw) for agent, raw in pinned.items()}
        self._pins.update(pins)
        self._by_kid = {pin.kid: pin.key for pin in self._pins.values()}

    def _refresh(self) -> None:
        """Re-read the enrolments (at most once every :data:`RELOAD_EVERY` seconds)."""
        if time.monotonic() - self._reloaded < RELOAD_EVERY:
            return
        self._reloaded = time.monotonic()
        if self._reload is not None:
            fresh = self._reload()
            if fresh is not None:
                self._set_pins(fresh)
        if self._reload_clients is not None:
            clients = self._reload_clients()
            if clients is not None:
                ring = KeyRing(clients, what="client")
                added = ring.by_id.keys() - self._clients.by_id.keys()
                removed = self._clients.by_id.keys() - ring.by_id.keys()
                for kid in sorted(added):
                    log.info("client key %s is trusted from now on", fingerprint(ring.by_id[kid]))
                for kid in sorted(removed):
                    log.info("client key %s is no longer trusted", fingerprint(self._clients.by_id[kid]))
                self._clients = ring

    def key(self, kid: str) -> Ed25519PublicKey:
        found = self._by_kid.get(kid) or self._any_id.get(kid)
        if found is not None:
            return found
        self._refresh()
        found = self._by_kid.get(kid)
        if found is not None:
            return found
        if kid in self._clients:
            return self._clients.key(kid)
        raise ProtocolError(
            f"message signed by key {key_fingerprint(kid)}, which is neither an enrolled agent's nor a client's:"
            " a client is trusted with `dagon keys trust-client client.pub`, an agent admitted with"
            f" `dagon agents approve ID` or `dagon keys trust-agent ID agent.pub` ({self._pins_file})",
            reason="untrusted",
        )

    def admit(self, kid: str, envelope: Envelope) -> None:
        msg = envelope.message
        if isinstance(msg, SubmitRun | CancelRun | ResumeRun | LogsRequest):
            if kid not in self._clients:
                raise ProtocolError(
                    f"{msg.OP} is signed by key {key_fingerprint(kid)}, which is not a client key", reason="untrusted"
                )
            return
        agent = getattr(msg, "agent", None)
        if not isinstance(agent, str):
            raise ProtocolError(f"{msg.OP} is not a message the coordinator accepts signed", reason="untrusted")
        if envelope.src != f"agent/{agent}":
            raise ProtocolError(
                f"{msg.OP} claims to be from agent {agent!r} but was sent by {envelope.src!r}", reason="untrusted"
            )
        pin = self._pins.get(agent)
        if pin is not None:
            if pin.kid != kid:
                raise ProtocolError(
                    f"agent {agent!r} signed {msg.OP} with key {key_fingerprint(kid)}, not with its enrolled key"
                    f" {fingerprint(pin.raw)};"
                    f" if the agent was reinstalled on purpose, remove its line from {self._pins_file}",
                    reason="untrusted",
                )
            return
        if kid in self._any_id:
            self._holders[agent] = raw_public_key(self._any_id[kid])
            return
        raise ProtocolError(
            f"agent {agent!r} is not enrolled with key {key_fingerprint(kid)}:"
            f" approve it with `dagon agents approve {agent}`",
            reason="untrusted",
        )

    def client_key(self, kid: str) -> bytes:
        """The raw public key of client key ``kid`` (``b""``: not a client key)."""
        key = self._clients.by_id.get(kid)
        return raw_public_key(key) if key is not None else b""

    def pin(self, agent: AgentId, raw: bytes) -> None:
        """Enrol ``agent`` with key ``raw`` (no-op when it is enrolled already, or its key is one
        enrolled for every id)."""
        if agent in self._pins or not raw or key_id(raw) in self._any_id:
            return
        self._set_pins({agent: raw})
        log.info("enrolled agent %s: %s", agent, fingerprint(raw))
        if self._on_pin is not None:
            self._on_pin(agent, raw)

    def pinned(self, agent: str) -> bytes | None:
        pin = self._pins.get(agent)
        if pin is not None:
            return pin.raw
        return None

    def key_of(self, agent: str) -> bytes:
        """The raw key ``agent`` signs with (its enrolment, or the home key it was seen using); ``b""``
        when unknown. Data grants for the agent are bound to it."""
        pin = self._pins.get(agent)
        return pin.raw if pin is not None else self._holders.get(agent, b"")

    def enrolled_for_any(self) -> list[bytes]:
        """Raw keys enrolled for every agent id."""
        return [raw_public_key(k) for k in self._any_id.values()]
