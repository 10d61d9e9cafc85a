"""Signed envelopes: what a verifying codec accepts and refuses, and why."""

from __future__ import annotations

import sys
import time

import msgpack
import pytest

from dagon.protocol import (
    AgentId,
    AssignTasks,
    Codec,
    Heartbeat,
    KeyRing,
    ProtocolError,
    ReplayGuard,
    RunId,
    Signer,
    TaskAssignment,
    TaskName,
    fingerprint,
    key_id,
    parse_public_key,
    private_key_from_pem,
    private_key_to_pem,
    public_key_line,
)

COORDINATOR = Signer.generate()
STRANGER = Signer.generate()


def assign(command: str = "touch marker") -> AssignTasks:
    task = TaskAssignment(
        run=RunId("r1"), workflow="wf", task=TaskName("t"), attempt=1, runtime="process", command=command
    )
    return AssignTasks(reply_to="main", tasks=(task,))


def receiver(clock: float | None = None, **kwargs: object) -> Codec:
    replay = ReplayGuard(clock=lambda: clock) if clock is not None else ReplayGuard()
    return Codec(sender="agent/a1", trust=KeyRing([COORDINATOR.public_key]), replay=replay, **kwargs)  # type: ignore[arg-type]


def sender(signer: Signer | None = COORDINATOR) -> Codec:
    return Codec(sender="coordinator/main", signer=signer)


def reason_of(codec: Codec, payload: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        codec.decode(payload)
    return info.value.reason


def test_signed_messages_verify_and_name_their_key() -> None:
    payload = sender().encode(assign())
    env = receiver().decode(payload)
    assert env.message == assign()
    assert env.key_id == COORDINATOR.key_id


def test_unsigned_messages_are_refused_when_verifying() -> None:
    assert reason_of(receiver(), sender(None).encode(assign())) == "unsigned"


def test_unknown_keys_are_refused() -> None:
    assert reason_of(receiver(), sender(STRANGER).encode(assign())) == "untrusted"


def test_every_single_byte_change_of_the_envelope_is_detected() -> None:
    payload = sender().encode(assign("touch marker"))
    kid, sig, body = msgpack.unpackb(payload)
    codec = receiver()
    changed = 0
    for i in range(len(body)):
        tampered = bytearray(body)
        tampered[i] ^= 0x01
        with pytest.raises(ProtocolError):
            codec.decode(msgpack.packb([kid, sig, bytes(tampered)]))
        changed += 1
    assert changed == len(body) > 50
    # a command altered to something still well-formed is the interesting case: forged
    evil = body.replace(b"touch marker", b"touch MARKER")
    assert evil != body
    assert reason_of(codec, msgpack.packb([kid, sig, evil])) == "forged"
    # a signature made by another key under the trusted key's id is forged too
    assert reason_of(codec, msgpack.packb([kid, STRANGER.sign(body), body])) == "forged"


def test_acting_messages_are_accepted_once() -> None:
    payload = sender().encode(assign())
    codec = receiver()
    codec.decode(payload)
    assert reason_of(codec, payload) == "replayed"


def test_stale_and_future_acting_messages_are_expired() -> None:
    payload = sender().encode(assign())
    ts = msgpack.unpackb(msgpack.unpackb(payload)[2])["ts"]
    assert reason_of(receiver(clock=ts + 121), payload) == "expired"
    assert reason_of(receiver(clock=ts - 121), payload) == "expired"
    assert receiver(clock=ts + 119).decode(payload).message == assign()


def test_reports_need_a_signature_but_not_freshness() -> None:
    beat = Codec(sender="agent/a1", signer=COORDINATOR).encode(Heartbeat(AgentId("a1"), 1, 0, 2))
    codec = receiver(clock=1e12)  # far in the future: a report is still accepted, and again
    assert codec.decode(beat).message == codec.decode(beat).message


def test_the_replay_cache_is_bounded_without_reopening_the_window() -> None:
    now = 1000.0
    guard = ReplayGuard(window=60, capacity=3, clock=lambda: now)
    for i in range(5):
        guard.check(f"id{i}", now - 10 + i, what="m")
    assert len(guard) == 3
    # id0 and id1 were dropped; their timestamps are now below the floor
    with pytest.raises(ProtocolError, match="older than the replay cache"):
        guard.check("id0", now - 10, what="m")
    now += 61  # everything leaves the window and the cache empties itself
    with pytest.raises(ProtocolError, match="outside"):
        guard.check("id4", now - 61 - 6, what="m")
    guard.check("fresh", now, what="m")
    assert len(guard) == 1


def test_verifying_codec_refuses_malformed_signed_frames() -> None:
    codec = receiver()
    for frame in ([], ["k"], ["k", b"s"], [1, b"s", b"b"], ["k", "s", b"b"], ["k", b"s", b"b", b"x"]):
        assert reason_of(codec, msgpack.packb(frame)) == "malformed"
    # the signature is checked before the envelope is even unpacked
    assert reason_of(codec, msgpack.packb([COORDINATOR.key_id, b"s", b"\xc1"])) == "forged"


def test_insecure_codec_accepts_both_and_verifies_nothing() -> None:
    codec = Codec(sender="agent/a1")
    assert codec.decode(sender(STRANGER).encode(assign())).key_id == STRANGER.key_id
    assert codec.decode(sender(None).encode(assign())).key_id == ""


def test_key_formats_round_trip_and_bad_keys_are_explained() -> None:
    line = public_key_line(COORDINATOR.public_key, "coordinator@host")
    assert line.startswith("ed25519 ") and line.endswith(" coordinator@host\n")
    assert key_id(parse_public_key(line)) == COORDINATOR.key_id
    assert fingerprint(parse_public_key(line)).startswith("SHA256:")
    signer = Signer(private_key_from_pem(private_key_to_pem(Signer.generate()._key)))
    assert len(signer.key_id) == 16 and "key" not in repr(signer).replace("key_id", "")
    for bad in ("", "ssh-rsa AAAA", "ed25519 not-base64!", "ed25519 AAAA"):
        with pytest.raises(ValueError, match=r"pub\.txt"):
            parse_public_key(bad, source="pub.txt")
    with pytest.raises(ValueError, match="not an unencrypted PEM"):
        private_key_from_pem(b"-----BEGIN NOTHING-----", source="k")


def _signed(signer: Signer, body: bytes) -> bytes:
    frame: bytes = msgpack.packb([signer.key_id, signer.sign(body), body])
    return frame


def test_nothing_of_an_unverified_envelope_is_decoded() -> None:
    codec = receiver()
    deep = b"\x91" * 100_000 + b"\xc0"  # would exhaust any recursive decoder
    # issue 15's poison: a signed-frame-shaped message around deep nesting, under a known or unknown key id
    assert reason_of(codec, msgpack.packb([COORDINATOR.key_id, b"\0" * 64, deep])) == "forged"
    assert reason_of(codec, msgpack.packb([STRANGER.key_id, b"\0" * 64, deep])) == "untrusted"
    assert reason_of(codec, _signed(STRANGER, deep)) == "untrusted"
    assert reason_of(codec, deep) == "malformed"  # an array, not a frame: refused at its first byte


def test_deep_nesting_inside_a_validly_signed_message_is_refused_without_recursion() -> None:
    codec = receiver()
    for depth in (40, sys.getrecursionlimit() + 10, 1020, 5000):
        head = {"v": 1, "op": "control", "id": f"{depth:016x}", "ts": time.time(), "src": "c", "action": "announce"}
        body = msgpack.packb({**head, "args": {"x": "HOLE"}})
        body = body.replace(msgpack.packb("HOLE"), b"\x91" * depth + b"\xc0")
        assert reason_of(codec, _signed(COORDINATOR, body)) in {"too_deep", "malformed"}


def test_a_bug_surfacing_in_the_decoder_is_still_a_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Codec, payload: bytes) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(Codec, "_decode", broken)
    assert reason_of(Codec(sender="agent/a1"), b"\x80") == "internal"


def test_a_per_topic_limit_refuses_before_reading() -> None:
    codec = receiver()
    payload = sender().encode(assign("x" * 5000))
    with pytest.raises(ProtocolError, match="over the 4096-byte limit") as info:
        codec.decode(payload, limit=4096)
    assert info.value.reason == "oversize"
    assert codec.decode(payload).message == assign("x" * 5000)
