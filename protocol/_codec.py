"""The msgpack codec: one versioned envelope, strict decoding.

Wire form of every internal message::

    {"v": PROTOCOL_VERSION, "op": <Message.OP>, "id": <hex>, "ts": <unix seconds>,
     "src": <sender id>, **fields}

Decoding is strict: bytes that are not msgpack, a payload over the size limit,
a wrong version, an unknown op, a missing or unexpected field, or a value of the
wrong type raise :class:`ProtocolError` whose message names the offending field
(``assign.tasks[3].timeout: expected float or None, got 'str'``). Nothing else
escapes :meth:`Codec.decode`.

Converters are compiled once per message class from its type hints, so decoding
a batch of thousands of assignments costs a few microseconds per item.

With a ``signer`` the envelope travels signed (see :mod:`dagon.protocol._auth`);
with a ``trust`` policy, decoding refuses unsigned messages, unknown or untrusted
keys, bad signatures, and — for messages that make the receiver act — stale or
replayed ones, each with its own rejection reason.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Union

import msgpack

from dagon.protocol import _messages as m
from dagon.protocol._auth import ACTING_OPS, ReplayGuard, Signer, Trust, key_fingerprint, verify
from dagon.protocol._errors import ProtocolError

__all__ = ["DEFAULT_MAX_SIZE", "PROTOCOL_VERSION", "Codec", "Envelope", "check_plain", "new_message_id"]

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_SIZE: Final = 16 * 1024 * 1024
_ENVELOPE_KEYS: Final = frozenset({"v", "op", "id", "ts", "src", "to"})

_Conv = Callable[[Any, str], Any]
_Enc = Callable[[Any], Any]

_MESSAGES: dict[str, type[m.Message]] = {
    cls.OP: cls
    for cls in (
        m.AssignTasks,
        m.CancelTasks,
        m.Control,
        m.UploadOutputs,
        m.DeleteData,
        m.ResultsStored,
        m.RevokeGrants,
        m.Announce,
        m.Offline,
        m.Heartbeat,
        m.TasksStarted,
        m.TasksFinished,
        m.Ack,
        m.TaskProgress,
        m.SubmitRun,
        m.CancelRun,
        m.ResumeRun,
        m.LogsRequest,
        m.Telemetry,
        m.TimeQuery,
        m.TimeAnswer,
        m.Answer,
    )
}


def new_message_id() -> str:
    return os.urandom(8).hex()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message with its envelope metadata."""

    message: m.Message
    id: str
    ts: float
    src: str
    key_id: str = ""  # the key that signed it ("" when unsigned)
    to: str = ""  # the one receiver it is meant for ("" when it names none)


def _tname(value: object) -> str:
    return type(value).__name__


# ---------------------------------------------------------------------------
# decoders


def _fail(path: str, expected: str, value: object) -> typing.NoReturn:
    raise ProtocolError(f"{path}: expected {expected}, got {_tname(value)!r}", reason="type")


def _conv_str(v: Any, path: str) -> str:
    if type(v) is not str:
        _fail(path, "str", v)
    return v


def _conv_int(v: Any, path: str) -> int:
    if type(v) is not int:
        _fail(path, "int", v)
    return v


def _conv_float(v: Any, path: str) -> float:
    t = type(v)
    if t is float:
        return v  # type: ignore[no-any-return]
    if t is int:
        return float(v)
    _fail(path, "float", v)


def _conv_bool(v: Any, path: str) -> bool:
    if type(v) is not bool:
        _fail(path, "bool", v)
    return v


_ATOMS: Final = (str, bytes, float, bool, type(None))
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


MAX_DEPTH: Final = 32  # nesting of free-form values (lists and maps inside each other)
MAX_ITEMS: Final = 1_000_000  # values inside one free-form value


def check_plain(v: Any, path: str) -> None:
    """Free-form values (python task args, results, control args) must be plain data:
    what msgpack round-trips unchanged — no extension types, no non-str map keys —
    nested at most :data:`MAX_DEPTH` deep.

    Iterative (an explicit stack), so no input can exhaust the interpreter's recursion
    limit; the cost is linear in the number of values.
    """
    # (value, path of its container, its key there, depth): paths are joined only for
    # containers and errors, so a long list of numbers costs no string per item.
    stack: list[tuple[Any, str, str, int]] = [(v, path, "", 0)]
    items = 0
    while stack:
        v, prefix, key, depth = stack.pop()
        items += 1
        t = type(v)
        if t in _ATOMS:
            continue
        if t is int:
            if not _INT_MIN <= v <= _INT_MAX:
                raise ProtocolError(f"{prefix}{key}: integer {v} does not fit in 64 bits", reason="value")
            continue
        if t is list or t is tuple or t is dict:
            here = prefix + key
            if depth >= MAX_DEPTH:
                raise ProtocolError(f"{here}: nested more than {MAX_DEPTH} levels deep", reason="too_deep")
            if items + len(v) > MAX_ITEMS:
                raise ProtocolError(f"{here}: more than {MAX_ITEMS} values", reason="oversize")
            if t is dict:
                for k, x in v.items():
                    if type(k) is not str:
                        raise ProtocolError(f"{here}: map keys must be strings, got {_tname(k)!r}", reason="type")
                    stack.append((x, here, f".{k}", depth + 1))
            else:
                stack.extend((x, here, f"[{i}]", depth + 1) for i, x in enumerate(v))
            continue
        if t is msgpack.Timestamp:
            raise ProtocolError(
                f"{prefix}{key}: msgpack extension type -1 (timestamp) is not allowed", reason="malformed"
            )
        raise ProtocolError(
            f"{prefix}{key}: {_tname(v)!r} is not plain data (use str, numbers, lists, maps)", reason="type"
        )


def _conv_bytes(v: Any, path: str) -> bytes:
    if type(v) is not bytes:
        _fail(path, "bytes", v)
    return v


def _conv_any(v: Any, path: str) -> Any:
    check_plain(v, path)
    return v


def _compile(tp: Any) -> tuple[_Conv, str]:
    """Return (converter, human-readable type name) for a type hint."""
    if tp is str:
        return _conv_str, "str"
    if tp is bool:
        return _conv_bool, "bool"
    if tp is int:
        return _conv_int, "int"
    if tp is float:
        return _conv_float, "float"
    if tp is bytes:
        return _conv_bytes, "bytes"
    if tp is Any:
        return _conv_any, "any"
    supertype = getattr(tp, "__supertype__", None)  # NewType
    if supertype is not None:
        return _compile(supertype)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_conv(tp), f"one of {[e.value for e in tp]}"
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _struct_conv(tp), tp.__name__
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:  # pragma: no cover - schema bug
            raise TypeError(f"unsupported union {tp!r}")
        conv, name = _compile(inner[0])

        def opt(v: Any, path: str) -> Any:
            return None if v is None else conv(v, path)

        return opt, f"{name} or None"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item, iname = _compile(args[0])

        def seq(v: Any, path: str) -> tuple[Any, ...]:
            if type(v) is not list and type(v) is not tuple:
                _fail(path, f"list of {iname}", v)
            if item is _conv_any:
                return tuple(v)
            return tuple([item(x, f"{path}[{i}]") for i, x in enumerate(v)])

        return seq, f"list of {iname}"
    if origin is dict and args[0] is str:
        val, vname = _compile(args[1])

        def mapping(v: Any, path: str) -> dict[str, Any]:
            if type(v) is not dict:
                _fail(path, f"map of str to {vname}", v)
            out = {}
            for k, x in v.items():
                if type(k) is not str:
                    _fail(f"{path} key", "str", k)
                out[k] = val(x, f"{path}.{k}")
            return out

        return mapping, f"map of str to {vname}"
    raise TypeError(f"unsupported type in message schema: {tp!r}")  # pragma: no cover


def _enum_conv(cls: type[enum.Enum]) -> _Conv:
    by_value = {e.value: e for e in cls}
    choices = sorted(by_value)

    def conv(v: Any, path: str) -> enum.Enum:
        try:
            return by_value[v]
        except (KeyError, TypeError):
            raise ProtocolError(f"{path}: expected one of {choices}, got {v!r}", reason="value") from None

    return conv


_STRUCT_CACHE: dict[type, _Conv] = {}


def _fields(cls: type) -> list[tuple[str, Any, bool]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append((f.name, hints[f.name], required))
    return out


def _struct_conv(cls: type) -> _Conv:
    cached = _STRUCT_CACHE.get(cls)
    if cached is not None:
        return cached
    specs = [(name, _compile(tp)[0], required) for name, tp, required in _fields(cls)]
    known = frozenset(name for name, _, _ in specs)
    required_names = [name for name, _, req in specs if req]
    required = frozenset(required_names)

    def conv(v: Any, path: str) -> Any:
        if type(v) is not dict:
            _fail(path, f"map ({cls.__name__})", v)
        kwargs = {}
        for name, c, _req in specs:
            if name in v:
                kwargs[name] = c(v[name], f"{path}.{name}")
        if len(kwargs) != len(v):
            extra = sorted(str(k) for k in v if k not in known)
            raise ProtocolError(f"{path}: unexpected field(s) {extra}", reason="field")
        if not required.issubset(kwargs):
            missing = [n for n in required_names if n not in kwargs]
            raise ProtocolError(f"{path}: missing field(s) {missing}", reason="field")
        return cls(**kwargs)

    _STRUCT_CACHE[cls] = conv
    return conv


# ---------------------------------------------------------------------------
# encoders


def _enc_identity(v: Any) -> Any:
    return v


def _enc_plain(v: Any) -> Any:
    check_plain(v, "free-form value")
    return v


def _enc_for(tp: Any) -> _Enc:
    if tp is Any:
        return _enc_plain
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return lambda v: v.value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _struct_enc(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        enc = _enc_for(inner)
        if enc is _enc_identity:
            return enc
        return lambda v: None if v is None else enc(v)
    if origin is tuple and args and args[-1] is Ellipsis:
        enc = _enc_for(args[0])
        if enc is _enc_identity:
            return list
        return lambda v: [enc(x) for x in v]
    if origin is dict and len(args) == 2 and args[1] is Any:
        return _enc_plain
    return _enc_identity


_ENC_CACHE: dict[type, _Enc] = {}


def _struct_enc(cls: type) -> _Enc:
    cached = _ENC_CACHE.get(cls)
    if cached is not None:
        return cached
    specs = [(name, _enc_for(tp)) for name, tp, _ in _fields(cls)]

    def enc(obj: Any) -> dict[str, Any]:
        try:
            return {name: e(getattr(obj, name)) for name, e in specs}
        except ProtocolError as exc:
            raise ProtocolError(f"cannot encode {cls.__name__}: {exc}", reason=exc.reason) from None

    _ENC_CACHE[cls] = enc
    return enc


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed", reason="malformed")


def _unpack(payload: bytes) -> Any:
    # msgpack's C unpacker is iterative with a fixed stack (1024 levels: deeper input
    # raises StackError) and bounds every string, array and map by the payload's size.
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_reject_ext)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage input
        raise ProtocolError(f"not a msgpack message: {exc}", reason="malformed") from exc


def _frame(payload: bytes) -> tuple[str, bytes, bytes] | None:
    """``(key_id, signature, envelope bytes)`` of a signed frame; ``None`` when ``payload``
    is not an array (an unsigned envelope). Reads only the frame's three elements: the
    envelope stays bytes until its signature has been checked."""
    if not payload or not (0x90 <= payload[0] <= 0x9F or payload[0] in (0xDC, 0xDD)):
        return None
    if payload[0] != 0x93:  # not three elements: refused without reading further
        raise ProtocolError("signed frame: expected [key_id, signature, envelope bytes]", reason="malformed")
    frame = _unpack(payload)
    if (
        type(frame) is not list
        or len(frame) != 3
        or type(frame[0]) is not str
        or type(frame[1]) is not bytes
        or type(frame[2]) is not bytes
    ):
        raise ProtocolError("signed frame: expected [key_id, signature, envelope bytes]", reason="malformed")
    return frame[0], frame[1], frame[2]


# ---------------------------------------------------------------------------


class Codec:
    """Encodes and strictly decodes internal messages.

    Args:
        sender: identifier put in the envelope's ``src`` field.
        max_size: payloads larger than this many bytes are rejected unread.
        signer: signs every encoded message (``None``: messages go unsigned).
        trust: who may sign what this side receives; ``None`` accepts unsigned
            messages and verifies nothing (the explicit ``--insecure`` mode).
        replay: freshness window and replay cache for messages that make this
            side act (default: a :class:`ReplayGuard` with its default window).
        recipient: this side's name (``agent/ID``): with it, a message that makes this side
            act must name it as its receiver (``to``) — a copy published on another
            agent's topic is refused there.
    """

    __slots__ = ("_dec", "_enc", "max_size", "recipient", "replay", "sender", "signer", "trust")

    def __init__(
        self,
        *,
        sender: str,
        max_size: int = DEFAULT_MAX_SIZE,
        signer: Signer | None = None,
        trust: Trust | None = None,
        replay: ReplayGuard | None = None,
        recipient: str = "",
    ) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.sender = sender
        self.max_size = max_size
        self.signer = signer
        self.trust = trust
        self.replay = replay if replay is not None else ReplayGuard()
        self.recipient = recipient
        self._enc = {cls: _struct_enc(cls) for cls in _MESSAGES.values()}
        self._dec = {op: _struct_conv(cls) for op, cls in _MESSAGES.items()}

    @property
    def verifies(self) -> bool:
        return self.trust is not None

    def encode(self, message: m.Message, *, msg_id: str | None = None, to: str = "") -> bytes:
        """Encode (and sign) ``message``; ``to`` names its one receiver (e.g. ``agent/edge1``): a
        receiver with a ``recipient`` refuses what makes it act unless it names that receiver."""
        body = self._enc[type(message)](message)
        body["v"] = PROTOCOL_VERSION
        body["op"] = message.OP
        body["id"] = msg_id or new_message_id()
        body["ts"] = time.time()
        body["src"] = self.sender
        if to:
            body["to"] = to
        data: bytes = msgpack.packb(body, use_bin_type=True)
        if self.signer is not None:
            data = msgpack.packb([self.signer.key_id, self.signer.sign(data), data], use_bin_type=True)
        if len(data) > self.max_size:
            raise ProtocolError(
                f"{message.OP} message is {len(data)} bytes, over the {self.max_size}-byte limit;"
                " split it or raise max_message_size",
                reason="oversize",
            )
        return data

    def decode(self, payload: bytes, *, limit: int | None = None) -> Envelope:
        """Check and decode one message.

        In order, each step before any more expensive one: the size (``limit``, at most
        ``max_size``); the frame; the signature over the raw envelope bytes, with a key the
        :class:`Trust` names from the key id alone; only then the envelope's typed decoding,
        the trust policy for this sender and message, and freshness and replay.

        Raises:
            ProtocolError: whatever is wrong with the message — and nothing else, whatever
                the bytes (a bug surfacing here is reported as ``reason="internal"``).
        """
        size = min(self.max_size, limit) if limit is not None else self.max_size
        if len(payload) > size:
            raise ProtocolError(f"payload of {len(payload)} bytes is over the {size}-byte limit", reason="oversize")
        try:
            return self._decode(payload)
        except ProtocolError:
            raise
        except Exception as exc:  # a message must never end its receiver
            raise ProtocolError(
                f"message could not be decoded ({type(exc).__name__}: {exc})", reason="internal"
            ) from exc

    def _decode(self, payload: bytes) -> Envelope:
        frame = _frame(payload)
        if frame is None:
            if self.trust is not None and not (payload and (0x80 <= payload[0] <= 0x8F or payload[0] in (0xDE, 0xDF))):
                raise ProtocolError("not a msgpack message: neither a signed frame nor an envelope", reason="malformed")
            if self.trust is not None:
                raise ProtocolError(
                    "message is not signed; this side only accepts signed messages"
                    " (is the sender running --insecure, or an old version?)",
                    reason="unsigned",
                )
            return self._decode_envelope(_unpack(payload))
        kid, signature, body = frame
        if self.trust is None:
            return self._decode_envelope(_unpack(body), kid)
        verify(self.trust.key(kid), signature, body, what=f"message signed by key {key_fingerprint(kid)}")
        envelope = self._decode_envelope(_unpack(body), kid)
        self.trust.admit(kid, envelope)
        if envelope.message.OP in ACTING_OPS:
            what = f"{envelope.message.OP} {envelope.id} from {envelope.src!r}"
            if self.recipient and envelope.to != self.recipient:
                meant = f"meant for {envelope.to!r}" if envelope.to else "names no receiver"
                raise ProtocolError(f"{what} {meant}, not {self.recipient!r}", reason="misdirected")
            self.replay.check(envelope.id, envelope.ts, what=what)
        return envelope

    def _decode_envelope(self, raw: Any, kid: str = "") -> Envelope:
        if type(raw) is not dict:
            raise ProtocolError(f"envelope: expected map, got {_tname(raw)!r}", reason="malformed")
        version = raw.pop("v", None)
        if type(version) is not int or version != PROTOCOL_VERSION:  # True == 1.0 == 1
            raise ProtocolError(
                f"envelope: protocol version {version!r} is not supported (this side speaks {PROTOCOL_VERSION})",
                reason="version",
            )
        op = raw.pop("op", None)
        conv = self._dec.get(op) if type(op) is str else None
        if conv is None:
            raise ProtocolError(f"envelope: unknown op {op!r}", reason="unknown_op")
        msg_id = _conv_str(raw.pop("id", None), f"{op}.id")
        ts = _conv_float(raw.pop("ts", None), f"{op}.ts")
        src = _conv_str(raw.pop("src", None), f"{op}.src")
        to = _conv_str(raw.pop("to", ""), f"{op}.to")
        return Envelope(conv(raw, op), msg_id, ts, src, kid, to)
