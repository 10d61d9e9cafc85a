"""``dagon agents approve ID``: enrol an agent by the key it announced, after a person compared it.

An agent that is not enrolled is refused by the coordinator, but its retained announce
stays on the broker with the public key it signs with. Approving reads that announce,
checks that it is signed by the very key it carries (so it cannot be one agent's key
under another's name), shows its fingerprint to compare with ``dagon-agent key`` on the
agent's machine, and appends ``ID ed25519 KEY`` to ``known_agents``. A running coordinator
re-reads that file when it next hears from the agent: no restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from dagon._keys import add_pin, keys_dir
from dagon.protocol import (
    Announce,
    Codec,
    DagonError,
    ProtocolError,
    fingerprint,
    key_id,
    parse_public_key,
    raw_public_key,
    topics,
)

__all__ = ["Candidate", "candidate", "enroll_candidate"]


@dataclass(frozen=True, slots=True)
class Candidate:
    agent: str
    key: bytes
    hostname: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def candidate(agent: str, statuses: Iterable[tuple[str, bytes]]) -> Candidate:
    """The key agent ``agent`` announced (from the retained statuses), self-signature checked.

    Raises:
        DagonError: no readable, self-signed announce of that agent is on the broker.
    """
    topic = topics.agent_status(agent)
    payload = dict(statuses).get(topic)
    if not payload:
        raise DagonError(
            f"agent {agent!r} has no announce on the broker: start it (`dagon-agent --id {agent}`), then approve it"
        )
    try:
        envelope = Codec(sender="cli").decode(payload, limit=topics.payload_limit(topic))
        message = envelope.message
        if not isinstance(message, Announce) or message.agent != agent or not message.key:
            raise ProtocolError("not an announce of this agent carrying its key", reason="unexpected")
        if envelope.key_id != key_id(message.key):
            raise ProtocolError("signed with another key than the one it carries", reason="forged")
        _, signature, body = msgpack.unpackb(payload)
        parse_public_key(message.key).verify(signature, body)
    except Exception as exc:  # anyone may publish there: say what is wrong, never crash
        raise DagonError(f"the retained status of agent {agent!r} cannot be approved: {exc}") from None
    return Candidate(agent, raw_public_key(parse_public_key(message.key)), message.capabilities.hostname)


def enroll_candidate(home: Path, found: Candidate, pinned: bytes | None) -> Path:
    """Append ``found`` to ``known_agents``; returns the file.

    Raises:
        DagonError: the agent is enrolled with another key already.
    """
    pins = keys_dir(home) / "known_agents"
    if pinned is not None:
        if pinned == found.key:
            return pins
        raise DagonError(
            f"agent {found.agent!r} is enrolled with {fingerprint(pinned)} in {pins}; if it was reinstalled on"
            " purpose, remove that line first"
        )
    add_pin(pins, found.agent, found.key)
    return pins
