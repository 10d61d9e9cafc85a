"""Topic builders, escaping, filters; public JSON; the in-memory transport."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagon.protocol import ProtocolError, decode_public, encode_public, topics
from dagon.protocol.transport import MemoryHub, Will, topic_matches


@given(st.text(min_size=1, max_size=40))
def test_escaping_round_trips_and_is_a_single_safe_level(name: str) -> None:
    level = topics.escape_level(name)
    assert not any(c in level for c in "/+#\x00")
    assert topics.unescape_level(level) == name


def test_topic_tree() -> None:
    assert topics.agent_status("pi-1") == "dagon/v1/agents/pi-1/status"
    assert topics.run_task_result("r1", "a/b+c#") == "dagon/v1/runs/r1/tasks/a%2Fb%2Bc%23/result"
    assert topics.parse_level(topics.run_task_result("r1", "50%"), 5) == "50%"
    assert topic_matches(topics.all_agent_status(), topics.agent_status("x"))
    assert topic_matches(topics.run_task_results("r1"), topics.run_task_result("r1", "t"))
    assert not topic_matches(topics.run_task_results("r1"), topics.run_task_result("r2", "t"))
    assert topic_matches("dagon/#", "dagon/v1/a/b")
    assert not topic_matches("dagon/+", "dagon/v1/a")
    with pytest.raises(ValueError, match="empty"):
        topics.escape_level("")


def test_public_json() -> None:
    doc = {"schema": "dagon.run-status/1", "run": "r", "state": "running"}
    assert decode_public(encode_public(doc), schema="dagon.run-status/1") == doc
    with pytest.raises(ProtocolError, match="expected schema"):
        decode_public(encode_public(doc), schema="dagon.task-result/1")
    with pytest.raises(ProtocolError, match="not a JSON document"):
        decode_public(b"\xff{")
    with pytest.raises(ProtocolError, match="JSON object"):
        decode_public(b"[1]")
    with pytest.raises(ValueError, match="schema"):
        encode_public({"run": "r"})


async def test_memory_transport_retained_wildcards_and_will() -> None:
    hub = MemoryHub()
    will = Will("dagon/v1/agents/a/status", b"gone")
    async with hub.transport(will=will) as agent, hub.transport() as watcher:
        await agent.publish("dagon/v1/agents/a/status", b"here", retain=True)
        await watcher.subscribe("dagon/v1/agents/+/status")
        messages = watcher.messages()
        first = await anext(messages)
        assert (first.topic, first.payload, first.retain) == ("dagon/v1/agents/a/status", b"here", True)
        hub.kill(agent)
        second = await anext(messages)
        assert second.payload == b"gone"
        await agent.__aexit__(None, None, None)  # idempotent after a kill
    async with hub.transport() as late:
        await late.subscribe("dagon/v1/agents/#")
        msg = await asyncio.wait_for(anext(late.messages()), 1)
        assert msg.payload == b"gone" and msg.retain
