"""Ed25519 signing and verification, on libsodium when PyNaCl is installed, else on OpenSSL.

Every message dagon sends is signed and every one it receives is verified, so these two calls are
on the path of every task and heartbeat. On the 2-core VM of the benchmarks OpenSSL (through
``cryptography``) verifies in ~145 µs and signs in ~40 µs; libsodium (through PyNaCl) in ~72 and
~21 µs (issue 21, docs/benchmarks.md). Ed25519 signatures are deterministic (RFC 8032): both give
the same signature for the same key and message, so the two sides of a conversation may use either.
libsodium is the stricter verifier (it also refuses non-canonical and small-order encodings, which
no honest signer produces).

``DAGON_ED25519=openssl`` keeps OpenSSL even where PyNaCl is installed (for comparisons).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["BACKEND", "BadSignature", "signer_for", "verify_signature"]


class BadSignature(Exception):
    """The signature does not match the message under that key."""


_VERIFIERS: dict[bytes, Callable[[bytes, bytes], object]] = {}
_MAX_VERIFIERS: Final = 4096  # distinct public keys kept ready (a fleet's agents and clients)


def _openssl_verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> None:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise BadSignature from None


def _openssl_signer(key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    return key.sign


try:
    if os.environ.get("DAGON_ED25519", "").lower() == "openssl":
        raise ImportError("DAGON_ED25519=openssl")
    from nacl.exceptions import BadSignatureError
    from nacl.signing import SigningKey, VerifyKey
except ImportError:
    BACKEND: str = "openssl"
    verify_signature = _openssl_verify
    signer_for = _openssl_signer
else:
    BACKEND = "libsodium"

    def _sodium_verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> None:
        raw = key.public_bytes_raw()
        check = _VERIFIERS.get(raw)
        if check is None:
            if len(_VERIFIERS) >= _MAX_VERIFIERS:
                _VERIFIERS.clear()
            check = _VERIFIERS[raw] = VerifyKey(raw).verify
        if len(signature) != 64:  # libsodium would read a longer one as signature + message
            raise BadSignature
        try:
            check(data, signature)
        except BadSignatureError:
            raise BadSignature from None

    def _sodium_signer(key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
        signing = SigningKey(key.private_bytes_raw())

        def sign(data: bytes) -> bytes:
            return signing.sign(data).signature

        return sign

    verify_signature = _sodium_verify
    signer_for = _sodium_signer
