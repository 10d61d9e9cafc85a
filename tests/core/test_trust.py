"""The coordinator's trust policy: pinned agent keys, client keys."""

from __future__ import annotations

import pytest

from dagon.core import CoordinatorTrust
from dagon.protocol import (
    AgentId,
    Announce,
    Codec,
    Heartbeat,
    ProtocolError,
    RunId,
    Signer,
    SubmitRun,
    raw_public_key,
)

from ._sim import caps

AGENT = Signer.generate()
OTHER = Signer.generate()
CLIENT = Signer.generate()


def announce(agent: str, signer: Signer, *, key: Signer | None = None, src: str | None = None) -> bytes:
    codec = Codec(sender=src or f"agent/{agent}", signer=signer)
    return codec.encode(Announce(AgentId(agent), caps(), key=raw_public_key((key or signer).public_key)))


def beat(agent: str, signer: Signer, src: str | None = None) -> bytes:
    return Codec(sender=src or f"agent/{agent}", signer=signer).encode(Heartbeat(AgentId(agent), 1, 0, 2))


def coordinator(**kwargs: object) -> tuple[Codec, CoordinatorTrust, list[tuple[str, bytes]]]:
    pins: list[tuple[str, bytes]] = []
    trust = CoordinatorTrust(clients=[CLIENT.public_key], on_pin=lambda a, k: pins.append((a, k)), **kwargs)  # type: ignore[arg-type]
    return Codec(sender="coordinator/main", trust=trust), trust, pins


def refused(codec: Codec, payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        codec.decode(payload)
    assert info.value.reason in {"untrusted", "forged"}


def test_first_announce_pins_and_later_reports_must_match() -> None:
    codec, trust, pins = coordinator()
    refused(codec, beat("a1", AGENT), "has not announced its key")
    env = codec.decode(announce("a1", AGENT))
    assert isinstance(env.message, Announce)
    trust.pin(AgentId("a1"), env.message.key)
    assert pins == [("a1", raw_public_key(AGENT.public_key))]
    assert codec.decode(beat("a1", AGENT)).key_id == AGENT.key_id
    # someone else claiming to be a1, with its own key: refused, pin unchanged
    refused(codec, beat("a1", OTHER), "not with its pinned key")
    refused(codec, announce("a1", OTHER), "remove its line")
    trust.pin(AgentId("a1"), raw_public_key(OTHER.public_key))  # a pin is never replaced silently
    assert trust.pinned("a1") == raw_public_key(AGENT.public_key)


def test_sender_must_be_the_agent_it_claims_to_be() -> None:
    codec, trust, _ = coordinator()
    trust.pin(AgentId("a1"), raw_public_key(AGENT.public_key))
    refused(codec, beat("a1", AGENT, src="agent/a2"), "claims to be from agent 'a1'")


def test_an_announce_signed_with_another_key_than_it_carries_is_refused() -> None:
    codec, _, _ = coordinator()
    refused(codec, announce("a1", OTHER, key=AGENT), "announced one key and signed with another")


def test_without_accepting_new_agents_only_enrolled_keys_pass() -> None:
    codec, _, _ = coordinator(accept_new_agents=False, pinned={"a1": raw_public_key(AGENT.public_key)})
    assert codec.decode(announce("a1", AGENT)).src == "agent/a1"
    refused(codec, announce("a2", OTHER), "not enrolled")


def test_runs_are_submitted_only_with_a_client_key() -> None:
    codec, _, _ = coordinator()
    submit = SubmitRun(run=RunId("r1"), workflow={"version": 1})
    assert codec.decode(Codec(sender="client/x", signer=CLIENT).encode(submit)).message == submit
    refused(codec, Codec(sender="client/x", signer=AGENT).encode(submit), "not one of the 1 client key")
