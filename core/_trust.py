"""Whose signatures the coordinator accepts: pinned agent keys and client keys.

* Reports from agent ``X`` (status, heartbeats, started/finished, acks) must come
  from sender ``agent/X`` and be signed by the key pinned for ``X``.
* An agent's key is pinned the first time it announces itself (trust on first use,
  like OpenSSH's ``accept-new``), unless ``accept_new_agents`` is off, in which case
  only keys enrolled beforehand are accepted. A pinned agent that comes back with a
  different key is refused until the operator removes the old pin.
* Run submissions and cancellations must be signed by a client key: the
  coordinator's own (same user, same machine) or one enrolled for a client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dagon.protocol import (
    AgentId,
    Announce,
    CancelRun,
    Envelope,
    KeyRing,
    ProtocolError,
    SubmitRun,
    fingerprint,
    key_id,
    parse_public_key,
)

__all__ = ["CoordinatorTrust"]

log = logging.getLogger(__name__)

OnPin = Callable[[AgentId, bytes], None]


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
        clients: keys allowed to submit and cancel runs.
        pinned: agent id → raw public key, known from earlier runs or enrolment.
        accept_new_agents: pin the key of an agent seen for the first time.
        on_pin: called with each newly pinned key (to persist it).
        pins_file: where pins live, named in error messages.
    """

    def __init__(
        self,
        *,
        clients: Iterable[Ed25519PublicKey],
        pinned: Mapping[str, bytes] | None = None,
        accept_new_agents: bool = True,
        on_pin: OnPin | None = None,
        pins_file: str = "the coordinator's known_agents file",
    ) -> None:
        self._clients = KeyRing(clients, what="client")
        # Parsed once: every report from an agent is verified against its pin.
        self._pins = {agent: _Pin.of(raw) for agent, raw in (pinned or {}).items()}
        self._accept_new = accept_new_agents
        self._on_pin = on_pin
        self._pins_file = pins_file

    def key_for(self, kid: str, envelope: Envelope) -> Ed25519PublicKey:
        msg = envelope.message
        if isinstance(msg, SubmitRun | CancelRun):
            return self._clients.key_for(kid, envelope)
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
                    f"agent {agent!r} signed {msg.OP} with key {kid}, not with its pinned key {fingerprint(pin.raw)};"
                    f" if the agent was reinstalled on purpose, remove its line from {self._pins_file}",
                    reason="untrusted",
                )
            return pin.key
        if isinstance(msg, Announce) and msg.key and self._accept_new:
            if key_id(msg.key) != kid:
                raise ProtocolError(f"agent {agent!r} announced one key and signed with another", reason="untrusted")
            try:
                return parse_public_key(msg.key, source=f"agent {agent!r}'s announced key")
            except ValueError as exc:
                raise ProtocolError(str(exc), reason="untrusted") from None
        if isinstance(msg, Announce):
            raise ProtocolError(
                f"agent {agent!r} (key {kid}) is not enrolled and this coordinator accepts no new agents;"
                " enrol its key with `dagon keys trust-agent`",
                reason="untrusted",
            )
        raise ProtocolError(f"{msg.OP} from agent {agent!r}, which has not announced its key", reason="untrusted")

    def pin(self, agent: AgentId, raw: bytes) -> None:
        """Remember ``agent``'s key after its announce verified (no-op when already pinned)."""
        if agent in self._pins or not raw:
            return
        self._pins[agent] = _Pin.of(raw)
        log.info("pinned the key of new agent %s: %s", agent, fingerprint(raw))
        if self._on_pin is not None:
            self._on_pin(agent, raw)

    def pinned(self, agent: str) -> bytes | None:
        pin = self._pins.get(agent)
        return pin.raw if pin is not None else None
