"""Topic builders, level escaping, filter matching; the public JSON encoding."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagon.protocol import (
    SCHEMA_RUN_STATUS,
    SCHEMA_TASK_RESULT,
    ProtocolError,
    decode_public,
    encode_public,
    topics,
)
from dagon.protocol.transport import topic_matches

FORBIDDEN = "/+#\x00"

# Names biased towards the characters that need escaping (and the escape character).
names = st.text(alphabet=st.sampled_from("ab%2F5/+#\x00é") | st.characters(), min_size=1, max_size=30)


@settings(max_examples=400)
@given(names)
def test_escaping_round_trips_and_yields_one_safe_level(name: str) -> None:
    level = topics.escape_level(name)
    assert not any(c in level for c in FORBIDDEN)
    assert level  # never an empty level
    assert topics.unescape_level(level) == name


@given(names, names)
def test_escaping_is_injective(a: str, b: str) -> None:
    if a != b:
        assert topics.escape_level(a) != topics.escape_level(b)


@given(names, names)
def test_builders_put_names_in_exactly_one_level(run: str, task: str) -> None:
    topic = topics.run_task_result(run, task)
    levels = topic.split("/")
    assert levels[:3] == ["dagon", "v1", "runs"] and levels[4] == "tasks" and levels[6] == "result"
    assert len(levels) == 7
    assert (topics.parse_level(topic, 3), topics.parse_level(topic, 5)) == (run, task)
    assert topic_matches(topics.run_task_results(run), topic)
    assert not any(c in topic for c in "+#\x00")


def test_escaping_examples_and_names_that_need_none() -> None:
    assert topics.escape_level("a/b+c#") == "a%2Fb%2Bc%23"
    assert topics.escape_level("50%") == "50%25"
    assert topics.escape_level("plain-name_1.x") == "plain-name_1.x"
    assert topics.unescape_level("%2f") == "/"  # escapes are case-insensitive on the way back
    assert topics.unescape_level("100%") == "100%"  # a lone '%' (not from us) is kept
    with pytest.raises(ValueError, match="empty"):
        topics.escape_level("")


def test_topic_tree() -> None:
    assert topics.agent_status("pi-1") == "dagon/wire/v1/agents/pi-1/status"
    assert topics.agent_tasks("pi/1") == "dagon/wire/v1/agents/pi%2F1/tasks"
    assert topics.agent_control("a") == "dagon/wire/v1/agents/a/control"
    assert topics.agent_telemetry("a") == "dagon/wire/v1/agents/a/telemetry"
    assert topics.coordinator_inbox("c#1") == "dagon/wire/v1/coordinator/c%231/inbox"
    assert topics.coordinator_status("c") == "dagon/v1/coordinator/c/status"
    assert topics.run_status("r") == "dagon/v1/runs/r/status"
    assert topics.run_events("r") == "dagon/v1/runs/r/events"
    assert topics.run_task_result("r1", "a/b+c#") == "dagon/v1/runs/r1/tasks/a%2Fb%2Bc%23/result"
    for filter_, topic in [
        (topics.all_agent_status(), topics.agent_status("x/y")),
        (topics.all_agent_telemetry(), topics.agent_telemetry("x")),
        (topics.all_coordinator_status(), topics.coordinator_status("c")),
        (topics.all_coordinator_agents(), topics.coordinator_agent("c", "a/b")),
    ]:
        assert topic_matches(filter_, topic)
    assert not topic_matches(topics.all_agent_status(), topics.agent_tasks("x"))
    assert topics.agent_of(topics.agent_tasks("pi/1")) == ("pi/1", "tasks")
    assert topics.agent_of(topics.agent_telemetry_json("a")) is None  # public, not a wire topic


def test_the_public_subscription_holds_no_wire_topic() -> None:
    """``dagon/v1/#`` is JSON only: every signed msgpack topic lives under ``dagon/wire/v1/``."""
    public = f"{topics.PREFIX}/#"
    wire = [
        topics.agent_status("a"), topics.agent_tasks("a"), topics.agent_control("a"),
        topics.agent_telemetry("a"), topics.coordinator_inbox("c"),
    ]  # fmt: skip
    for topic in wire:
        assert not topic_matches(public, topic), topic
        assert topic_matches(f"{topics.WIRE_PREFIX}/#", topic)
    for topic in (
        topics.run_status("r"), topics.run_events("r"), topics.run_task_result("r", "t"),
        topics.run_task_readings("r", "t"), topics.agent_telemetry_json("a"), topics.coordinator_status("c"),
        topics.coordinator_agent("c", "a"),
    ):  # fmt: skip
        assert topic_matches(public, topic), topic
    assert not topic_matches(topics.run_task_results("r1"), topics.run_task_result("r2", "t"))


# -- filter matching ---------------------------------------------------------------


def reference_match(filter_: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching, written independently as a regular expression."""
    parts = filter_.split("/")
    pattern = ""
    for i, part in enumerate(parts):
        sep = "/" if i else ""
        if part == "#":
            # '#' also matches the parent level: "a/#" matches "a"
            pattern += "(?:/.*)?" if i else ".*"
            break
        pattern += sep + ("[^/]*" if part == "+" else re.escape(part))
    return re.fullmatch(pattern, topic, flags=re.DOTALL) is not None


level = st.sampled_from(["a", "b", "", "dagon", "v1"])
topic_st = st.lists(level, min_size=1, max_size=5).map("/".join)
filter_st = st.lists(st.sampled_from(["a", "b", "", "+", "dagon"]), min_size=1, max_size=5).flatmap(
    lambda parts: st.booleans().map(lambda hash_: "/".join([*parts, "#"] if hash_ else parts))
) | st.just("#")


@settings(max_examples=500)
@given(filter_st, topic_st)
def test_topic_matches_agrees_with_the_mqtt_rules(filter_: str, topic: str) -> None:
    assert topic_matches(filter_, topic) == reference_match(filter_, topic)


@pytest.mark.parametrize(
    ("filter_", "topic", "expected"),
    [
        ("sport/tennis/#", "sport/tennis", True),  # '#' includes the parent level
        ("sport/tennis/#", "sport/tennis/player1/ranking", True),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),  # '+' matches an empty level
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "a/b/c", True),
        ("a/+/c", "a//c", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matches_spec_examples(filter_: str, topic: str, expected: bool) -> None:
    assert topic_matches(filter_, topic) is expected


# -- public JSON ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(), json_values, max_size=5), st.sampled_from([SCHEMA_RUN_STATUS, SCHEMA_TASK_RESULT]))
def test_public_json_round_trips(doc: dict[str, Any], schema: str) -> None:
    doc = {**doc, "schema": schema}
    payload = encode_public(doc)
    assert decode_public(payload, schema=schema) == doc
    assert json.loads(payload.decode("utf-8")) == doc  # plain UTF-8 JSON for any MQTT client


@settings(max_examples=300)
@given(st.binary(max_size=100) | st.text(max_size=50).map(str.encode))
def test_public_decode_of_garbage_raises_protocol_error_only(payload: bytes) -> None:
    try:
        doc = decode_public(payload)
    except ProtocolError as exc:
        assert exc.reason == "malformed"  # noqa: PT017 - checking every failure, not one
    else:
        assert isinstance(doc, dict)


def test_public_json_details() -> None:
    doc = {"schema": SCHEMA_RUN_STATUS, "run": "r", "state": "running", "name": "héllo"}
    payload = encode_public(doc)
    assert "héllo".encode() in payload  # UTF-8, not \\u escapes
    assert b" " not in payload  # compact
    wrong_schema = r"expected schema 'dagon\.task-result/1', got 'dagon\.run-status/1'"
    with pytest.raises(ProtocolError, match=wrong_schema) as info:
        decode_public(payload, schema=SCHEMA_TASK_RESULT)
    assert info.value.reason == "schema"
    with pytest.raises(ProtocolError, match="not a JSON document"):
        decode_public(b"\xff{")
    with pytest.raises(ProtocolError, match="expected a JSON object, got list"):
        decode_public(b"[1]")
    with pytest.raises(ProtocolError, match="not a JSON document"):
        decode_public(b"[" * 100_000)  # deeper than the interpreter's recursion limit
    with pytest.raises(ValueError, match="schema"):
        encode_public({"run": "r"})
    # Values JSON cannot represent are written as strings rather than failing.
    assert decode_public(encode_public({"schema": "s", "path": __import__("pathlib").Path("/x")}))["path"] == "/x"
