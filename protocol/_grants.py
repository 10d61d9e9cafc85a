"""Data-plane tokens: short-lived, signed grants to read (or upload) one task's files.

The coordinator mints a grant for each input a consumer must pull from another
host: it names one run, task and attempt, the path (file, directory or glob) the
reference covers, who it is for, what it allows and until when. Data servers
verify grants offline with the coordinator keys they trust — no round trip, no
shared state. The text form is ``KEYID.BODY.SIGNATURE`` (base64url).

A grant names its *holder*: the consumer agent's public key. A data server then accepts it
only with a proof of possession appended by the holder — ``KEYID.BODY.SIGNATURE.PROOF``,
the holder's signature over the token (:func:`bind_grant`) — so a grant read off the
broker is useless to anyone without that agent's private key.

A grant also names the *consumer attempt* it was minted for (run, task, attempt). When
that attempt ends (succeeded, failed, cancelled, superseded), the coordinator revokes
its grants: it tells the serving agent (``RevokeGrants``), which refuses them from then
on (reason ``revoked``) and remembers that until they would have expired anyway. The TTL
stays the upper bound, e.g. for grants minted by an earlier coordinator process.
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

from dagon.protocol._auth import Signer, key_fingerprint, parse_public_key, verify
from dagon.protocol._errors import ProtocolError

__all__ = ["DEFAULT_GRANT_TTL", "Grant", "bind_grant", "covers", "mint_grant", "read_grant"]

DEFAULT_GRANT_TTL: Final = 900.0  # seconds: long enough to queue behind slots, short enough to be useless later
_VERSION: Final = 3
_PROOF: Final = b"dagon-grant-holder\0"
_OPS: Final = frozenset({"read", "write", "logs"})


@dataclass(frozen=True, slots=True)
class Grant:
    """Permission to ``op`` the files ``path`` of one attempt's directory until ``expires``.

    Attributes:
        run, task, attempt: whose directory.
        path: what the reference covers (a file, a directory, or a glob), relative.
        audience: who it was minted for (an agent id, or ``client``), for the logs.
        op: ``read`` (pull from a data server), ``write`` (upload to the relay) or ``logs`` (read the
            attempt's captured ``stdout`` or ``stderr``, named by ``path``: ``dagon logs``).
        expires: unix time after which it is refused.
        holder: the raw Ed25519 public key that must prove possession (``b""``: a bearer grant,
            e.g. of an ``--insecure`` coordinator).
        consumer: the attempt ``(run, task, attempt)`` it was minted for: it is revoked when that
            attempt ends (``None``: bound to no attempt — client fetches, relay uploads).
    """

    run: str
    task: str
    attempt: int
    path: str
    audience: str
    op: str
    expires: float
    holder: bytes = b""
    consumer: tuple[str, str, int] | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_grant(signer: Signer, grant: Grant) -> str:
    if grant.op not in _OPS:
        raise ValueError(f"grant op must be one of {sorted(_OPS)}, got {grant.op!r}")
    consumer = list(grant.consumer) if grant.consumer is not None else None
    body = msgpack.packb(
        [_VERSION, grant.run, grant.task, grant.attempt, grant.path, grant.audience, grant.op, grant.expires,
         grant.holder, consumer]
    )  # fmt: skip
    return f"{signer.key_id}.{_b64(body)}.{_b64(signer.sign(body))}"


def bind_grant(token: str, holder: Signer) -> str:
    """``token`` with the holder's proof of possession appended (what a consumer sends)."""
    if token.count(".") != 2:
        return token  # already bound, or not a grant: the server says what is wrong
    return f"{token}.{_b64(holder.sign(_PROOF + token.encode()))}"


def read_grant(token: str, keys: Mapping[str, Ed25519PublicKey] | None, *, now: float | None = None) -> Grant:
    """Verify ``token`` against the trusted ``keys`` (key id → key); ``None`` verifies no
    signature (``--insecure`` agents), but the grant's scope and expiry still apply.

    Raises:
        ProtocolError: malformed, signed by an unknown key, forged or expired (``reason`` says which).
    """
    parts = token.split(".")
    if len(parts) not in (3, 4):
        raise ProtocolError("data token: expected KEYID.BODY.SIGNATURE[.PROOF]", reason="malformed")
    kid, body_text, sig_text = parts[:3]
    key = keys.get(kid) if keys is not None else None
    if keys is not None and key is None:
        raise ProtocolError(f"data token signed by unknown key {key_fingerprint(kid)}", reason="untrusted")
    try:
        body, signature = _unb64(body_text), _unb64(sig_text)
    except ValueError:
        raise ProtocolError("data token: not base64url", reason="malformed") from None
    if key is not None:
        verify(key, signature, body, what="data token")
    try:
        fields = msgpack.unpackb(body)
        version, run, task, attempt, path, audience, op, expires, holder, consumer = fields
        if type(holder) is not bytes or len(holder) not in (0, 32):
            raise TypeError("holder")
        if consumer is not None:
            c_run, c_task, c_attempt = consumer
            if type(c_run) is not str or type(c_task) is not str or type(c_attempt) is not int:
                raise TypeError("consumer")
            consumer = (c_run, c_task, c_attempt)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ProtocolError("data token: unreadable body", reason="malformed") from None
    if version != _VERSION or op not in _OPS:
        raise ProtocolError(f"data token: version {version!r} / op {op!r} not supported", reason="malformed")
    grant = Grant(
        str(run), str(task), int(attempt), str(path), str(audience), str(op), float(expires), holder, consumer
    )
    if (time.time() if now is None else now) > grant.expires:
        raise ProtocolError(f"data token for {grant.task}/{grant.path} expired", reason="expired")
    if holder and keys is not None:
        if len(parts) != 4:
            raise ProtocolError(
                f"data token for {grant.task}/{grant.path} is bound to agent {grant.audience!r}: only it can use it",
                reason="unbound",
            )
        try:
            proof = _unb64(parts[3])
        except ValueError:
            raise ProtocolError("data token: proof not base64url", reason="malformed") from None
        unsigned = ".".join(parts[:3]).encode()
        verify(parse_public_key(holder), proof, _PROOF + unsigned, what=f"data token of agent {grant.audience!r}")
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
