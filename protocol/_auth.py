"""Message authentication: Ed25519 signatures, key ids, freshness and replay checks.

A signed message travels as a three-element msgpack array around the ordinary
envelope bytes::

    [key_id, signature, envelope_bytes]

``key_id`` names the signing key (the first 16 hex digits of the SHA-256 of the
raw public key); the signature covers ``envelope_bytes`` exactly, so nothing in
the envelope — op, id, timestamp, sender, any field — can change unnoticed.

Who trusts which key is the receiver's policy (a :class:`Trust`); this module only
does the cryptography and the bookkeeping. No I/O: key files are read and written
by the entry points.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dagon.protocol._ed25519 import BadSignature, signer_for, verify_signature
from dagon.protocol._errors import ProtocolError

if TYPE_CHECKING:
    from dagon.protocol._codec import Envelope

__all__ = [
    "ACTING_OPS",
    "DEFAULT_FRESHNESS",
    "KeyRing",
    "ReplayGuard",
    "Signer",
    "Trust",
    "fingerprint",
    "key_fingerprint",
    "key_id",
    "parse_public_key",
    "private_key_from_pem",
    "private_key_to_pem",
    "public_key_line",
    "raw_public_key",
    "verify",
]

# Messages that make their receiver act (run, cancel, control, submit): these must
# also be fresh and seen only once. Reports and retained status messages only need
# a valid signature — a replayed report is ignored by attempt fencing, and a
# retained announce or Last Will is old by nature.
ACTING_OPS: Final = frozenset(
    {"assign", "cancel", "control", "upload", "submit", "cancel_run", "delete", "stored", "resume", "revoke", "logs"}
)
DEFAULT_FRESHNESS: Final = 120.0  # seconds of clock difference accepted either way
_KEY_TYPE: Final = "ed25519"


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | bytes) -> str:
    """Short id of a public key as it appears on the wire (16 hex digits)."""
    raw = key if isinstance(key, bytes) else raw_public_key(key)
    return hashlib.sha256(raw).hexdigest()[:16]


def fingerprint(key: Ed25519PublicKey | bytes) -> str:
    """``SHA256:<base64>`` of the raw public key, the form people compare (as OpenSSH shows it)."""
    raw = key if isinstance(key, bytes) else raw_public_key(key)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def key_fingerprint(kid: str) -> str:
    """The start of the :func:`fingerprint` of the key with id ``kid`` (all a receiver knows of a key
    it does not have), e.g. ``SHA256:q3Xk8Jw2Ab…``: the one format people compare keys in.

    The id is the first 8 bytes of the key's SHA-256; their base64 fixes the first 10 characters.
    """
    try:
        head = bytes.fromhex(kid)[:8]
    except ValueError:
        return f"key id {kid[:16]!r}"
    if len(head) < 8:
        return f"key id {kid!r}"
    return "SHA256:" + base64.b64encode(head).decode()[:10] + "…"


def public_key_line(key: Ed25519PublicKey, comment: str = "") -> str:
    """One line, ``ed25519 <base64 raw key> [comment]``: easy to copy between machines."""
    text = f"{_KEY_TYPE} {base64.b64encode(raw_public_key(key)).decode()}"
    return f"{text} {comment}".rstrip() + "\n"


def parse_public_key(text: str | bytes, *, source: str = "public key") -> Ed25519PublicKey:
    """Parse a key written by :func:`public_key_line` or 32 raw bytes.

    Raises:
        ValueError: not an Ed25519 public key; the message names ``source``.
    """
    if isinstance(text, bytes):
        if len(text) == 32:
            return Ed25519PublicKey.from_public_bytes(text)
        text = text.decode("utf-8", "replace")
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != _KEY_TYPE:
        raise ValueError(f"{source}: expected a line 'ed25519 <base64 key> [comment]' as written by `dagon keys`")
    try:
        raw = base64.b64decode(parts[1], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"{source}: not a valid Ed25519 public key ({exc})") from None


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_from_pem(data: bytes, *, source: str = "private key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{source}: expected an Ed25519 key, got {type(key).__name__}")
    return key


class Signer:
    """Signs envelope bytes with one private key."""

    __slots__ = ("_key", "_sign", "key_id", "public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._sign = signer_for(key)  # libsodium where installed (dagon.protocol._ed25519)
        self.public_key = key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._sign(data)

    def __repr__(self) -> str:  # never print key material
        return f"Signer(key_id={self.key_id!r})"


class Trust(Protocol):
    """A receiver's policy: which key may have signed this message.

    Checked in two steps so that nothing from a message is decoded before its
    signature holds: ``key`` names the public key for a key id alone (raising
    :class:`ProtocolError` with reason ``"untrusted"`` for a key this side does not
    know); after the signature verified and the envelope was decoded, ``admit``
    decides whether that key may say this (sender, message), raising the same way.
    """

    def key(self, kid: str) -> Ed25519PublicKey: ...

    def admit(self, kid: str, envelope: Envelope) -> None: ...


class KeyRing:
    """The simplest :class:`Trust`: a fixed set of keys, each good for any message."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = (), *, what: str = "trusted") -> None:
        self._keys = {key_id(k): k for k in keys}
        self._what = what

    def add(self, key: Ed25519PublicKey) -> None:
        self._keys[key_id(key)] = key

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def by_id(self) -> dict[str, Ed25519PublicKey]:
        """Key id → key (for verifying data-plane grants)."""
        return dict(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def key(self, kid: str) -> Ed25519PublicKey:
        found = self._keys.get(kid)
        if found is None:
            raise ProtocolError(
                f"message signed by key {key_fingerprint(kid)}, which is not one of the {len(self._keys)}"
                f" {self._what} key(s)",
                reason="untrusted",
            )
        return found

    def admit(self, kid: str, envelope: Envelope) -> None:
        return None


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes, *, what: str) -> None:
    try:
        verify_signature(key, signature, data)
    except BadSignature:
        detail = f"{what}: the signature does not match the message (forged or altered)"
        raise ProtocolError(detail, reason="forged") from None


class ReplayGuard:
    """Freshness window plus a cache of the message ids seen inside it.

    A message is accepted once, and only if its timestamp is within ``window``
    seconds of the local clock. Ids are remembered until they leave the window,
    so memory is bounded by the message rate times the window; past ``capacity`` the
    oldest ids are dropped and the window's lower edge moves up to the dropped
    timestamp, so a dropped id can never be accepted again.
    """

    def __init__(
        self,
        *,
        window: float = DEFAULT_FRESHNESS,
        capacity: int = 200_000,
        clock: Callable[[], float] = time.time,
        on_accept: Callable[[str, float], None] | None = None,
    ) -> None:
        if window <= 0 or capacity <= 0:
            raise ValueError("the freshness window and the replay cache capacity must be positive")
        self.window = window
        self.capacity = capacity
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> ts, in arrival order
        self._floor = 0.0  # timestamps at or below this were (or could have been) dropped
        self._on_accept = on_accept  # persists each accepted id (replay protection across restarts)

    def seed(self, entries: Iterable[tuple[str, float]], *, floor: float = 0.0) -> None:
        """Remember ids accepted before (by an earlier process, read back from disk); with ``floor``,
        nothing at or below that timestamp is accepted (what the record could not vouch for)."""
        for nonce, ts in sorted(entries, key=lambda e: e[1]):
            self._seen[nonce] = ts
        self._floor = max(self._floor, floor)

    def check(self, nonce: str, ts: float, *, what: str) -> None:
        now = self._clock()
        if abs(now - ts) > self.window:
            raise ProtocolError(
                f"{what}: timestamp is {now - ts:+.0f} s off this clock, outside the ±{self.window:.0f} s window"
                " (expired, replayed, or a clock is wrong — check NTP)",
                reason="expired",
            )
        self._expire(now)
        if ts <= self._floor:
            raise ProtocolError(f"{what}: older than the replay cache can vouch for", reason="expired")
        if nonce in self._seen:
            raise ProtocolError(f"{what}: message id {nonce} was already accepted (replay)", reason="replayed")
        if self._on_accept is not None:
            self._on_accept(nonce, ts)  # before acting on it: a crash right after must not forget it
        self._seen[nonce] = ts
        if len(self._seen) > self.capacity:
            _, dropped = self._seen.popitem(last=False)
            self._floor = max(self._floor, dropped)

    def _expire(self, now: float) -> None:
        seen = self._seen
        limit = now - self.window
        # Arrival order is close to timestamp order; stop at the first fresh entry.
        while seen:
            nonce, ts = next(iter(seen.items()))
            if ts >= limit:
                break
            del seen[nonce]

    def __len__(self) -> int:
        return len(self._seen)
