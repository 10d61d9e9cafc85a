"""Ed25519 on libsodium (PyNaCl) and on OpenSSL (cryptography): the same signatures, either side
verifies the other's, both refuse what was altered; the faster one is what dagon uses where it is
installed, and ``DAGON_ED25519=openssl`` keeps OpenSSL."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl import signing as sodium  # a dependency of dagon where the tests run (x86_64, aarch64)

from dagon.protocol import Codec, Heartbeat, KeyRing, ProtocolError, Signer
from dagon.protocol import _ed25519 as ed


def sodium_pair(key: Ed25519PrivateKey) -> tuple[sodium.SigningKey, sodium.VerifyKey]:
    signing = sodium.SigningKey(key.private_bytes_raw())
    return signing, signing.verify_key


@pytest.mark.parametrize("size", [0, 1, 300, 1 << 20])
def test_both_libraries_give_the_same_signature_and_verify_each_other(size: int) -> None:
    key = Ed25519PrivateKey.generate()
    data = os.urandom(size)
    by_openssl = key.sign(data)
    signing, verifying = sodium_pair(key)
    by_sodium = signing.sign(data).signature
    assert by_openssl == by_sodium  # RFC 8032 signatures are deterministic
    assert ed.signer_for(key)(data) == by_openssl
    key.public_key().verify(by_sodium, data)  # raises if not
    verifying.verify(data, by_openssl)
    ed.verify_signature(key.public_key(), by_openssl, data)


def test_an_altered_message_a_wrong_key_or_a_malformed_signature_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    data = b"assign task A to agent0"
    signature = ed.signer_for(key)(data)
    for bad_key, bad_sig, bad_data in [
        (key.public_key(), signature, data + b"!"),
        (Ed25519PrivateKey.generate().public_key(), signature, data),
        (key.public_key(), bytes(64), data),
        (key.public_key(), signature[:63], data),
        (key.public_key(), signature + data, b""),  # libsodium's combined form must not pass as detached
    ]:
        with pytest.raises(ed.BadSignature):
            ed.verify_signature(bad_key, bad_sig, bad_data)


def test_a_forged_message_through_the_codec_is_refused_as_forged() -> None:
    sender, forger = Signer.generate(), Signer.generate()
    beat = Heartbeat(agent="a", seq=1, running=0, free_slots=1)  # type: ignore[arg-type]
    receiver = Codec(sender="coordinator", trust=KeyRing([sender.public_key]))
    assert receiver.decode(Codec(sender="agent/a", signer=sender).encode(beat)).message == beat
    forged = Codec(sender="agent/a", signer=forger).encode(beat)
    with pytest.raises(ProtocolError):
        receiver.decode(forged)


def test_dagon_uses_libsodium_where_pynacl_is_installed_and_openssl_when_told() -> None:
    assert ed.BACKEND == "libsodium"  # PyNaCl is installed: the speed-up is on, not silently off
    probe = "from dagon.protocol._ed25519 import BACKEND; print(BACKEND)"
    env = dict(os.environ, DAGON_ED25519="openssl")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "openssl"


def test_pynacl_is_a_dependency_of_dagon_on_this_platform() -> None:
    assert platform.machine() in ("x86_64", "aarch64"), platform.machine()  # where the suite runs
    requirement = [r for r in importlib.metadata.requires("dagon-engine") or [] if r.lower().startswith("pynacl")]
    assert requirement, "pyproject.toml lost the pynacl dependency"
    assert importlib.metadata.version("pynacl")
