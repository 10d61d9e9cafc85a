"""Data-plane tokens: short-lived, signed grants to read (or upload) one task's files.

The coordinator mints a grant for each input a consumer must pull from another
host: it names one run, task and attempt, the path (file, directory or glob) the
reference covers, who it is for, what it allows and until when. Data servers
verify grants offline with the coordinator keys they trust — no round trip, no
shared state. The text form is ``KEYID.BODY.SIGNATURE`` (base64url).
"""

from __future__ import annotations

import base64
import fnmatch
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dagon.protocol._auth import Signer, verify
from dagon.protocol._errors import ProtocolError

__all__ = ["DEFAULT_GRANT_TTL", "Grant", "covers", "mint_grant", "read_grant"]

DEFAULT_GRANT_TTL: Final = 900.0  # seconds: long enough to queue behind slots, short enough to be useless later
_VERSION: Final = 1
_OPS: Final = frozenset({"read", "write"})


@dataclass(frozen=True, slots=True)
class Grant:
    """Permission to ``op`` the files ``path`` of one attempt's directory until ``expires``.

    Attributes:
        run, task, attempt: whose directory.
        path: what the reference covers (a file, a directory, or a glob), relative.
        audience: who it was minted for (an agent id, or ``client``), for the logs.
        op: ``read`` (pull from a data server) or ``write`` (upload to the relay).
        expires: unix time after which it is refused.
    """

    run: str
    task: str
    attempt: int
    path: str
    audience: str
    op: str
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_grant(signer: Signer, grant: Grant) -> str:
    if grant.op not in _OPS:
        raise ValueError(f"grant op must be one of {sorted(_OPS)}, got {grant.op!r}")
    body = msgpack.packb(
        [_VERSION, grant.run, grant.task, grant.attempt, grant.path, grant.audience, grant.op, grant.expires]
    )
    return f"{signer.key_id}.{_b64(body)}.{_b64(signer.sign(body))}"


def read_grant(token: str, keys: Mapping[str, Ed25519PublicKey] | None, *, now: float | None = None) -> Grant:
    """Verify ``token`` against the trusted ``keys`` (key id → key); ``None`` verifies no
    signature (``--insecure`` agents), but the grant's scope and expiry still apply.

    Raises:
        ProtocolError: malformed, signed by an unknown key, forged or expired (``reason`` says which).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ProtocolError("data token: expected KEYID.BODY.SIGNATURE", reason="malformed")
    kid, body_text, sig_text = parts
    key = keys.get(kid) if keys is not None else None
    if keys is not None and key is None:
        raise ProtocolError(f"data token signed by unknown key {kid[:16]!r}", reason="untrusted")
    try:
        body, signature = _unb64(body_text), _unb64(sig_text)
    except ValueError:
        raise ProtocolError("data token: not base64url", reason="malformed") from None
    if key is not None:
        verify(key, signature, body, what="data token")
    try:
        fields = msgpack.unpackb(body)
        version, run, task, attempt, path, audience, op, expires = fields
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ProtocolError("data token: unreadable body", reason="malformed") from None
    if version != _VERSION or op not in _OPS:
        raise ProtocolError(f"data token: version {version!r} / op {op!r} not supported", reason="malformed")
    grant = Grant(str(run), str(task), int(attempt), str(path), str(audience), str(op), float(expires))
    if (time.time() if now is None else now) > grant.expires:
        raise ProtocolError(f"data token for {grant.task}/{grant.path} expired", reason="expired")
    return grant


def covers(scope: str, path: str) -> bool:
    """Whether a grant for ``scope`` (file, directory or glob) covers the relative ``path``.

    Globs match one path level per pattern level (``*`` never crosses ``/``), and a
    matched directory covers everything below it, like staging does.
    """
    want = [p for p in scope.split("/") if p not in ("", ".")]
    have = [p for p in path.split("/") if p not in ("", ".")]
    if not want or len(have) < len(want):
        return False
    return all(fnmatch.fnmatchcase(h, w) for h, w in zip(have, want, strict=False))
