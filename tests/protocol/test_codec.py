"""The msgpack codec: round trips and strict rejection of anything malformed."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagon.protocol import (
    PROTOCOL_VERSION,
    Ack,
    AgentId,
    Announce,
    AssignTasks,
    CancelRun,
    CancelTasks,
    Capabilities,
    Codec,
    Control,
    Heartbeat,
    Offline,
    OutputFile,
    ProtocolError,
    Rejection,
    ResultStatus,
    RunId,
    StageInput,
    StartedTask,
    SubmitRun,
    TaskAssignment,
    TaskName,
    TaskRef,
    TaskResult,
    TasksFinished,
    TasksStarted,
)

MESSAGES = [
    AssignTasks,
    CancelTasks,
    Control,
    Announce,
    Offline,
    Heartbeat,
    TasksStarted,
    TasksFinished,
    Ack,
    SubmitRun,
    CancelRun,
]

text = st.text(max_size=20)
ints = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
values = st.recursive(
    st.none() | st.booleans() | ints | floats | text | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:
        return strategy_for(supertype)
    if tp is str:
        return text
    if tp is int:
        return ints
    if tp is float:
        return floats
    if tp is bool:
        return st.booleans()
    if tp is Any:
        return values
    if tp is ResultStatus:
        return st.sampled_from(list(ResultStatus))
    if dataclasses.is_dataclass(tp):
        return struct(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(text, strategy_for(args[1]), max_size=3)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return st.none() | strategy_for(inner)
    raise TypeError(tp)


def struct(cls: Any) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


any_message = st.one_of(*(struct(cls) for cls in MESSAGES))
codec = Codec(sender="test")


@settings(max_examples=300, deadline=None)
@given(any_message)
def test_every_message_round_trips(message: Any) -> None:
    envelope = codec.decode(codec.encode(message))
    assert envelope.message == message
    assert envelope.src == "test"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_protocol_error(payload: bytes) -> None:
    try:
        codec.decode(payload)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(values)
def test_random_msgpack_values_are_rejected_cleanly(value: Any) -> None:
    try:
        codec.decode(msgpack.packb(value, use_bin_type=True))
    except ProtocolError:
        pass


def assignment() -> AssignTasks:
    inp = StageInput("workflow:///A/x", "wf", TaskName("A"), "x", AgentId("a1"), "h", "/s/A-1")
    task = TaskAssignment(RunId("r"), "wf", TaskName("B"), 1, "process", "cat workflow:///A/x", inputs=(inp,))
    return AssignTasks(reply_to="main", tasks=(task,))


def raw(message: Any) -> dict[str, Any]:
    return msgpack.unpackb(codec.encode(message))  # type: ignore[no-any-return]


def test_wrong_type_names_the_field() -> None:
    body = raw(assignment())
    body["tasks"][0]["timeout"] = "soon"
    with pytest.raises(ProtocolError, match=r"assign\.tasks\[0\]\.timeout: expected float") as info:
        codec.decode(msgpack.packb(body))
    assert info.value.reason == "type"


def test_missing_and_unexpected_fields() -> None:
    body = raw(assignment())
    del body["tasks"][0]["command"]
    with pytest.raises(ProtocolError, match=r"missing field\(s\) \['command'\]"):
        codec.decode(msgpack.packb(body))
    body = raw(assignment())
    body["tasks"][0]["inputs"][0]["evil"] = 1
    with pytest.raises(ProtocolError, match=r"assign\.tasks\[0\]\.inputs\[0\]: unexpected field\(s\) \['evil'\]"):
        codec.decode(msgpack.packb(body))


def test_bool_is_not_an_int_and_enums_are_checked() -> None:
    body = raw(Heartbeat(agent=AgentId("a"), seq=1, running=0, free_slots=1))
    body["seq"] = True
    with pytest.raises(ProtocolError, match=r"heartbeat\.seq: expected int"):
        codec.decode(msgpack.packb(body))
    result = TaskResult(RunId("r"), TaskName("t"), 1, ResultStatus.SUCCEEDED, 0, 0.0, 1.0)
    body = raw(TasksFinished(agent=AgentId("a"), results=(result,)))
    body["results"][0]["status"] = "exploded"
    with pytest.raises(ProtocolError, match="expected one of"):
        codec.decode(msgpack.packb(body))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.update(v=PROTOCOL_VERSION + 1), "version"),
        (lambda b: b.pop("v"), "version"),
        (lambda b: b.update(op="format_disk"), "unknown_op"),
        (lambda b: b.update(op=7), "unknown_op"),
        (lambda b: b.pop("id"), "type"),
    ],
)
def test_envelope_rejections(mutate: Any, reason: str) -> None:
    body = raw(CancelRun(run=RunId("r")))
    mutate(body)
    with pytest.raises(ProtocolError) as info:
        codec.decode(msgpack.packb(body))
    assert info.value.reason == reason


def test_non_map_extension_types_and_oversize() -> None:
    with pytest.raises(ProtocolError, match="expected map"):
        codec.decode(msgpack.packb([1, 2, 3]))
    with pytest.raises(ProtocolError, match="extension type"):
        codec.decode(msgpack.packb({"v": 1, "op": "cancel_run", "x": msgpack.ExtType(5, b"zz")}))
    small = Codec(sender="s", max_size=64)
    big = codec.encode(assignment())
    with pytest.raises(ProtocolError, match="over the 64-byte limit") as info:
        small.decode(big)
    assert info.value.reason == "oversize"
    with pytest.raises(ProtocolError, match="over the 64-byte limit"):
        small.encode(assignment())
    with pytest.raises(ValueError, match="max_size"):
        Codec(sender="s", max_size=0)


def test_several_tasks_per_assignment_and_every_shared_struct() -> None:
    caps = Capabilities("h", "id", "aarch64", "linux", 4, 2**30, ("process",), {"site": "edge"}, 4, "1", prefetch=2)
    result = TaskResult(
        RunId("r"),
        TaskName("t"),
        2,
        ResultStatus.FAILED,
        3,
        1.0,
        2.5,
        cpu_time=0.1,
        max_rss=1024,
        stderr_tail="boom",
        outputs=(OutputFile("a.txt", 3, "ab" * 32),),
        value={"k": [1, 2]},
    )
    messages = [
        AssignTasks(reply_to="c", tasks=assignment().tasks * 3),
        Announce(agent=AgentId("a"), capabilities=caps),
        TasksFinished(agent=AgentId("a"), results=(result,)),
        TasksStarted(agent=AgentId("a"), tasks=(StartedTask(RunId("r"), TaskName("t"), 1, 1.0, "/w"),)),
        Ack(agent=AgentId("a"), accepted=1, rejected=(Rejection(TaskRef(RunId("r"), TaskName("t"), 1), "busy"),)),
        Control(action="announce"),
        Offline(agent=AgentId("a"), reason="shutdown"),
        SubmitRun(run=RunId("r"), workflow={"version": 1, "name": "w", "tasks": []}),
    ]
    for message in messages:
        assert codec.decode(codec.encode(message)).message == message
    assert result.duration == pytest.approx(1.5)
