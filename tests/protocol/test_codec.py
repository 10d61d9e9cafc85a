"""The msgpack codec: round trips and strict rejection of anything malformed.

Strategies are derived from the message dataclasses' type hints, so a new field
or message type is covered without touching this file (``test_every_op_is_tested``
fails when a message class is added to the wire but not to ``MESSAGES``).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagon.protocol import (
    PROTOCOL_VERSION,
    AgentId,
    Announce,
    AssignTasks,
    CancelRun,
    Capabilities,
    Codec,
    Control,
    FromAgent,
    FromCoordinator,
    Heartbeat,
    Message,
    OutputFile,
    ProtocolError,
    ResultStatus,
    RunId,
    StageInput,
    SubmitRun,
    TaskAssignment,
    TaskName,
    TaskResult,
    TasksFinished,
    ToAgent,
    ToCoordinator,
)

MESSAGES: list[type[Message]] = [
    *typing.get_args(ToAgent),
    *typing.get_args(FromAgent),
    *typing.get_args(ToCoordinator),
    *(typing.get_args(FromCoordinator) or (FromCoordinator,)),  # a union of one is the class itself
]

# -- strategies from the dataclasses -------------------------------------------

text = st.text(max_size=12)
ints = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
# Values an ``Any`` field may carry and get back unchanged: msgpack scalars, lists
# and str-keyed maps (tuples come back as lists, so they are not generated).
values = st.recursive(
    st.none() | st.booleans() | ints | floats | text | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    supertype = getattr(tp, "__supertype__", None)  # NewType
    if supertype is not None:
        return strategy_for(supertype)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: text, int: ints, float: floats, bool: st.booleans(), bytes: st.binary(max_size=40)
    }  # fmt: skip
    if tp in simple:
        return simple[tp]
    if tp is Any:
        return values
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return struct(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=2).map(tuple)
    if origin is dict:
        return st.dictionaries(text, strategy_for(args[1]), max_size=2)
    if type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        return st.none() | strategy_for(inner)
    raise TypeError(f"no strategy for {tp!r}; extend strategy_for")


def struct(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)})


any_message = st.one_of(*(struct(cls) for cls in MESSAGES))
codec = Codec(sender="test")


def pack(body: object) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def raw(message: Message) -> dict[str, Any]:
    return msgpack.unpackb(codec.encode(message), raw=False)  # type: ignore[no-any-return]


# -- round trips ---------------------------------------------------------------


def test_every_op_is_tested() -> None:
    # Every class the direction unions name is registered with the codec, under a unique op.
    ops = [cls.OP for cls in MESSAGES]
    assert len(set(ops)) == len(ops) == 22
    for cls in MESSAGES:
        example = codec.encode(_minimal(cls))
        assert codec.decode(example).message.OP == cls.OP


def _minimal(cls: type) -> Any:
    """The smallest valid instance of a dataclass (required fields only)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        tp = hints[f.name]
        tp = getattr(tp, "__supertype__", tp)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            kwargs[f.name] = _minimal(tp)
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            kwargs[f.name] = next(iter(tp))
        else:
            origin = typing.get_origin(tp)
            kwargs[f.name] = {tuple: (), dict: {}}.get(origin) if origin else tp()
    return cls(**kwargs)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.OP)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(struct(cls))
    envelope = codec.decode(codec.encode(message, msg_id="m-1"))
    assert envelope.message == message
    assert type(envelope.message) is cls
    assert (envelope.id, envelope.src) == ("m-1", "test")
    assert isinstance(envelope.ts, float)


# -- garbage in, ProtocolError out -------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_protocol_error_only(payload: bytes) -> None:
    reason = None
    try:
        codec.decode(payload)
    except ProtocolError as exc:
        reason = exc.reason
    assert reason in {None, "malformed", "version", "unknown_op", "type", "field", "value", "oversize"}


@settings(max_examples=300, deadline=None)
@given(values)
def test_random_msgpack_documents_decode_or_raise_protocol_error_only(value: Any) -> None:
    try:
        codec.decode(pack(value))
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(any_message, st.data())
def test_corrupted_valid_messages_raise_protocol_error_only(message: Message, data: st.DataObject) -> None:
    payload = bytearray(codec.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(payload)))
    try:
        codec.decode(bytes(payload[:cut]))
    except ProtocolError:
        pass


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never used
        b"\x91" * 100_000 + b"\xc0",  # nesting deeper than any stack
        b"\xdd\xff\xff\xff\xff",  # array of 2**32-1 items, announced but absent
        b"\xdf\xff\xff\xff\xff",  # same for a map
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\x81\xa1v\xa2\xff\xfe",  # invalid UTF-8 in a str
    ],
    ids=["empty", "reserved", "deep", "array32", "map32", "str32", "utf8"],
)
def test_hostile_msgpack_is_malformed(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(payload)
    assert info.value.reason == "malformed"


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(ProtocolError, match="extra data") as info:
        codec.decode(codec.encode(CancelRun(run=RunId("r"))) + b"\xc0")
    assert info.value.reason == "malformed"


# -- mutated valid messages: the error names the field -------------------------------


@dataclasses.dataclass(frozen=True)
class Slot:
    """One field of one (possibly nested) struct inside a raw message body."""

    path: str  # path of the struct holding the field, as the codec names it
    body: dict[str, Any]  # that struct, inside the raw message (mutate in place)
    name: str
    tp: Any
    required: bool


def slots(cls: type, body: dict[str, Any], path: str) -> Iterator[Slot]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        tp = hints[f.name]
        yield Slot(path, body, f.name, tp, required)
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            value = body[f.name]
            if typing.get_origin(tp) is tuple:
                for i, item in enumerate(value):
                    yield from slots(inner, item, f"{path}.{f.name}[{i}]")
            else:
                yield from slots(inner, value, f"{path}.{f.name}")


def mutations(slot: Slot) -> list[str]:
    out = ["extra"]
    if slot.required:
        out.append("remove")
    if slot.tp is not Any:
        out.append("wrong_type")
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message, st.data())
def test_mutated_messages_name_the_field(message: Message, data: st.DataObject) -> None:
    body = raw(message)
    slot = data.draw(st.sampled_from(list(slots(type(message), body, message.OP))))
    mutation = data.draw(st.sampled_from(mutations(slot)))
    if mutation == "remove":
        del slot.body[slot.name]
        expected, reason = f"{slot.path}: missing field(s) ['{slot.name}']", "field"
    elif mutation == "extra":
        slot.body["zz_extra"] = 1
        expected, reason = f"{slot.path}: unexpected field(s) ['zz_extra']", "field"
    else:
        # bytes are a valid value for no typed field but bytes (and ``Any``); a list is for no bytes field
        slot.body[slot.name] = [b"\x00"] if slot.tp is bytes else b"\x00"
        expected, reason = f"{slot.path}.{slot.name}: expected ", None
    with pytest.raises(ProtocolError) as info:
        codec.decode(pack(body))
    assert str(info.value).startswith(expected), (str(info.value), expected)
    if reason is not None:
        assert info.value.reason == reason
    else:
        assert info.value.reason in {"type", "value"}


def assignment() -> AssignTasks:
    inp = StageInput("workflow:///A/x", "wf", TaskName("A"), "x", AgentId("a1"), "h", "/s/A-1")
    task = TaskAssignment(RunId("r"), "wf", TaskName("B"), 1, "process", "cat workflow:///A/x", inputs=(inp,))
    return AssignTasks(reply_to="main", tasks=(task, task))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("tasks", 1, "timeout"), "soon", r"assign\.tasks\[1\]\.timeout: expected float, got 'str'"),
        (("tasks", 0, "attempt"), True, r"assign\.tasks\[0\]\.attempt: expected int, got 'bool'"),
        (("tasks", 0, "attempt"), 1.0, r"assign\.tasks\[0\]\.attempt: expected int, got 'float'"),
        (("tasks", 0, "env"), {"A": 1}, r"assign\.tasks\[0\]\.env\.A: expected str, got 'int'"),
        (("tasks", 0, "inputs", 0, "task"), None, r"assign\.tasks\[0\]\.inputs\[0\]\.task: expected str"),
        (("tasks", 0, "outputs"), "a.txt", r"assign\.tasks\[0\]\.outputs: expected list of str"),
        (("tasks", 0), [], r"assign\.tasks\[0\]: expected map \(TaskAssignment\)"),
        (("tasks",), {}, r"assign\.tasks: expected list of TaskAssignment"),
    ],
)
def test_wrong_types_name_the_field(path: tuple[Any, ...], value: Any, message: str) -> None:
    top = raw(assignment())
    target: Any = top
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ProtocolError, match=message):
        codec.decode(pack(top))


def test_non_str_map_keys_in_typed_maps_name_the_field() -> None:
    # msgpack itself accepts bytes keys (strict_map_key allows str and bytes)
    body = raw(assignment())
    body["tasks"][0]["env"] = {b"K": "v"}
    with pytest.raises(ProtocolError, match=r"assign\.tasks\[0\]\.env key: expected str, got 'bytes'"):
        codec.decode(pack(body))


def test_enum_values_are_checked() -> None:
    result = TaskResult(RunId("r"), TaskName("t"), 1, ResultStatus.SUCCEEDED, 0, 0.0, 1.0)
    for bad in ("exploded", 1, ["succeeded"], None):
        body = raw(TasksFinished(agent=AgentId("a"), results=(result,)))
        body["results"][0]["status"] = bad
        with pytest.raises(ProtocolError, match=r"finished\.results\[0\]\.status: expected one of \[") as info:
            codec.decode(pack(body))
        assert info.value.reason == "value"


# -- the envelope ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "reason", "message"),
    [
        (lambda b: b.update(v=PROTOCOL_VERSION + 1), "version", r"protocol version 2 is not supported"),
        (lambda b: b.update(v="1"), "version", r"protocol version '1' is not supported"),
        (lambda b: b.update(v=True), "version", r"protocol version True is not supported"),
        (lambda b: b.update(v=1.0), "version", r"protocol version 1\.0 is not supported"),
        (lambda b: b.pop("v"), "version", r"protocol version None"),
        (lambda b: b.update(op="format_disk"), "unknown_op", r"unknown op 'format_disk'"),
        (lambda b: b.update(op=7), "unknown_op", r"unknown op 7"),
        (lambda b: b.update(op=b"cancel_run"), "unknown_op", r"unknown op b'cancel_run'"),
        (lambda b: b.pop("op"), "unknown_op", r"unknown op None"),
        (lambda b: b.pop("id"), "type", r"cancel_run\.id: expected str"),
        (lambda b: b.update(id=5), "type", r"cancel_run\.id: expected str, got 'int'"),
        (lambda b: b.update(ts="now"), "type", r"cancel_run\.ts: expected float, got 'str'"),
        (lambda b: b.update(ts=True), "type", r"cancel_run\.ts: expected float, got 'bool'"),
        (lambda b: b.pop("src"), "type", r"cancel_run\.src: expected str"),
        (lambda b: b.pop("run"), "field", r"cancel_run: missing field\(s\) \['run'\]"),
        (lambda b: b.update(evil=1), "field", r"cancel_run: unexpected field\(s\) \['evil'\]"),
    ],
)
def test_envelope_rejections(mutate: Any, reason: str, message: str) -> None:
    body = raw(CancelRun(run=RunId("r")))
    mutate(body)
    with pytest.raises(ProtocolError, match=message) as info:
        codec.decode(pack(body))
    assert info.value.reason == reason


@pytest.mark.parametrize("top", ["assign", 7, None, b"\x81", 1.5, True])
def test_non_map_top_level(top: Any) -> None:
    with pytest.raises(ProtocolError, match=r"envelope: expected map, got") as info:
        codec.decode(pack(top))
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("where", ["top", "nested", "any_field"])
def test_extension_types_are_rejected(where: str) -> None:
    ext = msgpack.ExtType(5, b"zz")
    body: dict[str, Any] = raw(Control(action="a", args={"x": 1}))
    if where == "top":
        body["args"] = ext
    elif where == "nested":
        body["args"] = {"x": [1, {"y": ext}]}
    else:
        body["action"] = ext
    with pytest.raises(ProtocolError, match="msgpack extension type 5 is not allowed") as info:
        codec.decode(pack(body))
    assert info.value.reason == "malformed"


def test_oversize_payloads_are_rejected_unread() -> None:
    small = Codec(sender="s", max_size=64)
    tiny = CancelRun(run=RunId("r"))
    big = codec.encode(assignment())
    assert len(big) > 64
    with pytest.raises(ProtocolError, match=r"payload of \d+ bytes is over the 64-byte limit") as info:
        small.decode(big)
    assert info.value.reason == "oversize"
    # Even garbage is refused by size before it is parsed.
    with pytest.raises(ProtocolError, match="over the 64-byte limit"):
        small.decode(b"\xc1" * 65)
    with pytest.raises(ProtocolError, match=r"assign message is \d+ bytes, over the 64-byte limit") as info:
        small.encode(assignment())
    assert info.value.reason == "oversize"
    at_limit = Codec(sender="s", max_size=len(codec.encode(tiny)))
    assert at_limit.decode(at_limit.encode(tiny)).message == tiny
    with pytest.raises(ValueError, match="max_size"):
        Codec(sender="s", max_size=0)


def test_batches_and_every_shared_struct() -> None:
    caps = Capabilities("h", "id", "aarch64", "linux", 4, 2**30, ("process",), {"site": "edge"}, 4, "1", prefetch=2)
    result = TaskResult(
        RunId("r"),
        TaskName("t"),
        2,
        ResultStatus.FAILED,
        3,
        1.0,
        2.5,
        outputs=(OutputFile("a.txt", 3, "ab" * 32),),
        value={"k": [1, 2], "b": b"\x00"},
    )
    assert result.duration == pytest.approx(1.5)
    batch = AssignTasks(reply_to="c", tasks=assignment().tasks * 500)
    for message in (batch, Announce(agent=AgentId("a"), capabilities=caps), TasksFinished(AgentId("a"), (result,))):
        assert codec.decode(codec.encode(message)).message == message
    submit = codec.decode(codec.encode(SubmitRun(RunId("r"), {"tasks": [{"n": 1}]}))).message
    assert isinstance(submit, SubmitRun)
    assert submit.workflow == {"tasks": [{"n": 1}]}
    assert codec.decode(codec.encode(Heartbeat(AgentId("a"), 1, 0, 2))).message == Heartbeat(AgentId("a"), 1, 0, 2)


# -- formerly known gaps, now fixed ---------------------------------------------------


def test_timestamp_extension_is_rejected_too() -> None:
    body = raw(Control(action="a"))
    body["args"] = {"t": msgpack.Timestamp(1, 0)}
    with pytest.raises(ProtocolError, match="extension type"):
        codec.decode(pack(body))


def test_encode_refuses_what_decode_would_reject() -> None:
    message = Control(action="a", args={"counts": {1: "one"}})
    try:
        payload = codec.encode(message)
    except ProtocolError:
        return  # refused at the sender, naming the field: fine
    assert codec.decode(payload).message == message
