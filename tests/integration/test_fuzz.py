"""Poison input: 10,000 random, mutated, deeply nested and oversize messages on every agent and
coordinator topic while a workflow runs; the workflow still completes correctly and every task ran exactly once.

The stack (coordinator + agent over the in-memory hub, real codec, real signatures, real processes)
runs on its own event loop in a thread; Hypothesis drives the intruder from the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgpack
import pytest
from _keys import AGENT, COORDINATOR
from hypothesis import given, settings
from hypothesis import strategies as st

import dagon
from dagon.agent import Agent
from dagon.core import Coordinator, RunResult, RunState
from dagon.protocol import (
    AgentId,
    AssignTasks,
    Codec,
    Heartbeat,
    RunId,
    Signer,
    TaskAssignment,
    TaskName,
    topics,
)
from dagon.protocol.transport import MemoryHub, MemoryTransport

from ._stack import memory_stack

STRANGER = Signer.generate()
AGENT_ID = "agent0"


class Stack:
    """A coordinator and an agent running a workflow on a private event loop thread."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-stack", daemon=True)
        self.exit = contextlib.AsyncExitStack()
        self.hub = MemoryHub()
        self.coordinator: Coordinator | None = None
        self.agent: Agent | None = None
        self.intruder: MemoryTransport | None = None
        self.run: RunId | None = None

    def call(self, coro: Any, timeout: float = 60) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self, wf: dagon.Workflow) -> None:
        self.thread.start()
        self.call(self._start(wf))

    async def _start(self, wf: dagon.Workflow) -> None:
        coordinator, agents = await self.exit.enter_async_context(memory_stack(self.hub, self.tmp))
        self.coordinator = coordinator
        self.agent = agents[0]
        self.intruder = await self.exit.enter_async_context(self.hub.transport())
        self.run = await coordinator.submit(wf)

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.intruder is not None
        self.call(self.intruder.publish(topic, payload))

    def wait(self) -> RunResult:
        assert self.coordinator is not None and self.run is not None
        return self.call(self.coordinator.wait(self.run), timeout=120)  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.exit.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def decoy(markers: Path) -> bytes:
    """A correctly signed assignment of a run the coordinator never started, whose command leaves a mark."""
    task = TaskAssignment(RunId("decoy-run"), "decoy", TaskName("decoy"), 1, "process", f"echo decoy >> {markers}")
    return Codec(sender="coordinator/test", signer=COORDINATOR).encode(
        AssignTasks(reply_to="test", tasks=(task,)), to=f"agent/{AGENT_ID}"
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, Path, bytes]]:
    tmp = tmp_path
    markers = tmp / "markers.txt"
    wf = dagon.Workflow("under-fire")
    for stage in range(6):
        for i in range(4):
            after = [f"s{stage - 1}_{j}" for j in range(4)] if stage else []
            wf.shell(f"s{stage}_{i}", f"sleep 0.2; echo $DAGON_TASK >> {markers}", after=after)
    running = Stack(tmp)
    running.start(wf)
    signed_decoy = decoy(markers)
    running.publish(topics.agent_tasks(AGENT_ID), signed_decoy)  # once: every later copy is a replay
    try:
        yield running, markers, signed_decoy
    finally:
        running.close()


TOPICS = st.sampled_from(
    [
        topics.agent_tasks(AGENT_ID),
        topics.agent_control(AGENT_ID),
        topics.agent_telemetry(AGENT_ID),
        topics.coordinator_inbox("test"),
        topics.agent_status("ghost"),
    ]
)
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def mutated(base: bytes) -> st.SearchStrategy[bytes]:
    def mutate(edits: list[tuple[int, int]], cut: int | None) -> bytes:
        data = bytearray(base)
        for position, value in edits:
            data[position % len(data)] = value
        return bytes(data[:cut] if cut is not None else data)

    edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)
    return st.builds(mutate, edits, st.none() | st.integers(0, len(base)))


def nested(depth: int) -> bytes:
    """``depth`` lists inside each other around a nil, written directly (no packer has to recurse)."""
    return b"\x91" * depth + b"\xc0"


DEEP = "\0deep\0"  # replaced by the nested value in the packed bytes


def signed_deep(signer: Signer, depth: int, *, src: str, op: str, fields: dict[str, Any]) -> bytes:
    """A correctly signed envelope with a free-form value (where ``fields`` holds :data:`DEEP`) nesting
    ``depth`` lists: it passes the signature check, so only the bounded decoder stands between it and
    the receiver."""
    head = {"v": 1, "op": op, "id": f"{depth:016x}", "ts": time.time(), "src": src, **fields}
    body = msgpack.packb(head).replace(msgpack.packb(DEEP), nested(depth))
    frame: bytes = msgpack.packb([signer.key_id, signer.sign(body), body])
    return frame


def deep_result(depth: int) -> bytes:
    result = {"run": "r", "task": "t", "attempt": 1, "status": "succeeded", "exit_code": 0, "started_at": 0.0,
              "finished_at": 0.0, "value": DEEP}  # fmt: skip
    fields = {"agent": AGENT_ID, "results": [result]}
    return signed_deep(AGENT, depth, src=f"agent/{AGENT_ID}", op="finished", fields=fields)


def deep_messages() -> st.SearchStrategy[bytes]:
    depths = st.integers(1, 5000)
    return st.one_of(
        depths.map(nested),  # a bare deep value
        depths.map(lambda d: msgpack.packb([COORDINATOR.key_id, b"\0" * 64, nested(d)])),  # issue 15's poison
        depths.map(lambda d: msgpack.packb([STRANGER.key_id, STRANGER.sign(nested(d)), nested(d)])),
        depths.map(  # signed by the trusted coordinator key: reaches the agent's decoder
            lambda d: signed_deep(
                COORDINATOR, d, src="coordinator/test", op="control", fields={"action": "announce", "args": {"x": DEEP}}
            )
        ),
        depths.map(deep_result),  # signed by the enrolled agent key: reaches the coordinator's decoder
    )


def strange_messages() -> st.SearchStrategy[bytes]:
    beat = Heartbeat(AgentId(AGENT_ID), 1, 0, 4)
    forged_beat = Codec(sender=f"agent/{AGENT_ID}", signer=STRANGER).encode(beat)
    unsigned_beat = Codec(sender=f"agent/{AGENT_ID}").encode(beat)
    return st.sampled_from([forged_beat, unsigned_beat])


def test_ten_thousand_poison_messages_change_nothing(stack: tuple[Stack, Path, bytes]) -> None:
    running, markers, signed_decoy = stack
    payloads = st.one_of(
        st.binary(max_size=300),
        plain.map(lambda v: msgpack.packb(v, use_bin_type=True)),
        plain.map(lambda v: msgpack.packb([COORDINATOR.key_id, b"\0" * 64, msgpack.packb(v)])),
        mutated(signed_decoy),
        strange_messages(),
        deep_messages(),
    )
    sent = 0

    @settings(max_examples=10_000, deadline=None, database=None)
    @given(topic=TOPICS, payload=payloads)
    def poison(topic: str, payload: bytes) -> None:
        nonlocal sent
        running.publish(topic, payload)
        sent += 1

    poison()
    assert sent >= 10_000
    result = running.wait()
    assert result.state is RunState.SUCCEEDED, result.cause
    lines = markers.read_text().split()
    assert sorted(line for line in lines if line != "decoy") == sorted(result.tasks)  # each task exactly once
    assert lines.count("decoy") == 1  # the genuine decoy ran once; no copy or mutation of it ever did
    assert running.agent is not None and running.coordinator is not None
    assert running.agent.rejections["replayed"] >= 1 and running.agent.rejections["forged"] >= 1
    assert sum(running.coordinator.rejections.values()) >= 100
    # signed deep values reached the bounded decoders
    assert running.agent.rejections["too_deep"] >= 1 and running.coordinator.rejections["too_deep"] >= 1
    again = dagon.Workflow("after")  # everyone still serves: a new run completes too
    again.shell("ok", "true")
    run = running.call(running.coordinator.submit(again))
    assert running.call(running.coordinator.wait(run)).state is RunState.SUCCEEDED


def test_oversize_frames_are_refused_unread_and_the_run_goes_on(stack: tuple[Stack, Path, bytes]) -> None:
    running, _, _ = stack
    big = msgpack.packb([STRANGER.key_id, b"\0" * 64, b"\x91" * (15 * 2**20)])  # ~15 MB
    just_over = msgpack.packb([COORDINATOR.key_id, b"\0" * 64, b"\0" * (topics.STATUS_LIMIT + 1)])
    for _ in range(5):
        running.publish(topics.agent_status("ghost"), big)
        running.publish(topics.agent_status("ghost"), just_over)
        running.publish(topics.agent_telemetry(AGENT_ID), big)
        running.publish(topics.agent_control(AGENT_ID), big)
        running.publish(topics.coordinator_inbox("test"), big)  # under the inbox limit: refused by its key
    result = running.wait()
    assert result.state is RunState.SUCCEEDED, result.cause
    assert running.coordinator is not None and running.agent is not None
    assert running.coordinator.rejections["oversize"] >= 15
    assert running.coordinator.rejections["untrusted"] >= 5
    assert running.agent.rejections["oversize"] >= 5
    assert all(outcome.attempt == 1 for outcome in result.tasks.values())  # nobody was thought offline
