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
    fingerprint,
    key_fingerprint,
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


def test_no_agent_is_admitted_on_first_use() -> None:
    codec, trust, pins = coordinator()
    refused(codec, announce("a1", AGENT), "neither an enrolled agent's nor a client's")
    refused(codec, beat("a1", AGENT), "neither an enrolled agent's nor a client's")
    assert pins == []
    assert trust.pinned("a1") is None


def test_an_enrolled_agent_reports_only_under_its_own_key() -> None:
    codec, trust, pins = coordinator()
    trust.pin(AgentId("a1"), raw_public_key(AGENT.public_key))  # `dagon agents approve a1`
    assert pins == [("a1", raw_public_key(AGENT.public_key))]
    assert codec.decode(announce("a1", AGENT)).key_id == AGENT.key_id
    assert codec.decode(beat("a1", AGENT)).key_id == AGENT.key_id
    # someone else claiming to be a1, with its own key: refused, enrolment unchanged
    refused(codec, beat("a1", OTHER), "neither an enrolled")
    trust.pin(AgentId("a2"), raw_public_key(OTHER.public_key))
    refused(codec, beat("a1", OTHER), "not with its enrolled key")
    refused(codec, announce("a1", OTHER), "remove its line")
    trust.pin(AgentId("a1"), raw_public_key(OTHER.public_key))  # an enrolment is never replaced silently
    assert trust.pinned("a1") == raw_public_key(AGENT.public_key)


def test_sender_must_be_the_agent_it_claims_to_be() -> None:
    codec, trust, _ = coordinator()
    trust.pin(AgentId("a1"), raw_public_key(AGENT.public_key))
    refused(codec, beat("a1", AGENT, src="agent/a2"), "claims to be from agent 'a1'")


def test_the_home_agent_key_is_enrolled_for_every_id_but_pinned_ids_keep_their_key() -> None:
    codec, trust, pins = coordinator(agent_keys=[AGENT.public_key], pinned={"a2": raw_public_key(OTHER.public_key)})
    assert codec.decode(announce("any-id", AGENT)).src == "agent/any-id"
    trust.pin(AgentId("any-id"), raw_public_key(AGENT.public_key))
    assert pins == []  # nothing to record: that key is enrolled for every id anyway
    refused(codec, announce("a2", AGENT), "not with its enrolled key")
    assert codec.decode(announce("a2", OTHER)).src == "agent/a2"


def test_an_approval_written_to_the_file_is_picked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    enrolled: dict[str, bytes] = {}
    calls: list[int] = []

    def reload() -> dict[str, bytes]:
        calls.append(1)
        return dict(enrolled)

    codec, _, _ = coordinator(reload=reload)
    monkeypatch.setattr("dagon.core._trust.RELOAD_EVERY", 0.0)
    refused(codec, announce("a1", AGENT), "neither an enrolled")
    enrolled["a1"] = raw_public_key(AGENT.public_key)
    assert codec.decode(announce("a1", AGENT)).src == "agent/a1"
    assert len(calls) == 2


def test_unknown_keys_reread_the_enrolments_at_most_once_a_second() -> None:
    calls: list[int] = []
    codec, _, _ = coordinator(reload=lambda: calls.append(1))
    for i in range(100):
        refused(codec, announce(f"sybil{i}", Signer.generate()), "neither an enrolled")
    assert len(calls) == 1


def test_runs_are_submitted_only_with_a_client_key() -> None:
    codec, trust, _ = coordinator()
    trust.pin(AgentId("a1"), raw_public_key(AGENT.public_key))
    submit = SubmitRun(run=RunId("r1"), workflow={"version": 1})
    assert codec.decode(Codec(sender="client/x", signer=CLIENT).encode(submit)).message == submit
    refused(codec, Codec(sender="client/x", signer=AGENT).encode(submit), "not a client key")


def test_client_keys_are_reread_so_trust_and_revocation_apply_without_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `dagon keys trust-client` (and removing a key file) does to a running coordinator."""
    newcomer = Signer.generate()
    clients = [CLIENT.public_key]
    codec, _, _ = coordinator(reload_clients=lambda: list(clients))
    monkeypatch.setattr("dagon.core._trust.RELOAD_EVERY", 0.0)
    submit = SubmitRun(run=RunId("r1"), workflow={"version": 1})
    refused(
        codec, Codec(sender="client/n", signer=newcomer).encode(submit), f"key {fingerprint(newcomer.public_key)[:17]}"
    )
    clients.append(newcomer.public_key)
    assert codec.decode(Codec(sender="client/n", signer=newcomer).encode(submit)).message == submit
    clients.remove(newcomer.public_key)
    refused(codec, Codec(sender="client/n", signer=newcomer).encode(submit), "neither an enrolled")


def test_a_key_the_receiver_does_not_have_is_named_by_the_start_of_its_fingerprint() -> None:
    for _ in range(50):
        signer = Signer.generate()
        short = key_fingerprint(signer.key_id)
        assert short.endswith("…") and fingerprint(signer.public_key).startswith(short[:-1])
        assert len(short) == len("SHA256:") + 10 + 1
