"""The outbox: coalesced, ordered reports through the real codec."""

from __future__ import annotations

import asyncio
import contextlib

from dagon.agent._outbox import START_GRACE, Outbox
from dagon.protocol import (
    AgentId,
    Codec,
    ResultStatus,
    RunId,
    StartedTask,
    TaskName,
    TaskResult,
    TasksFinished,
    TasksStarted,
    topics,
)
from dagon.protocol.transport import MemoryHub, Publisher


def started(task: str) -> StartedTask:
    return StartedTask(RunId("r"), TaskName(task), 1, 1.0, f"/s/r/{task}-1")


def result(task: str) -> TaskResult:
    return TaskResult(RunId("r"), TaskName(task), 1, ResultStatus.SUCCEEDED, 0, 1.0, 2.0, workdir=f"/s/r/{task}-1")


async def test_a_start_whose_result_is_in_the_same_flush_is_not_sent() -> None:
    hub = MemoryHub()
    codec = Codec(sender="agent/a")
    async with hub.transport() as sender, hub.transport() as inbox:
        await inbox.subscribe(topics.coordinator_inbox("c"))
        outbox = Outbox(agent=AgentId("a"), codec=codec, publisher=Publisher(sender))
        outbox.started("c", started("quick"))
        outbox.started("c", started("slow"))
        outbox.finished("c", result("quick"))
        await outbox.flush()
        messages = inbox.messages()
        first = codec.decode((await anext(messages)).payload).message
        second = codec.decode((await anext(messages)).payload).message
    assert isinstance(first, TasksStarted) and [t.task for t in first.tasks] == ["slow"]
    assert isinstance(second, TasksFinished) and [r.task for r in second.results] == ["quick"]
    assert second.results[0].started_at == 1.0 and second.results[0].workdir == "/s/r/quick-1"


async def test_a_lone_start_waits_briefly_for_its_result_but_is_sent_if_none_comes() -> None:
    hub = MemoryHub()
    codec = Codec(sender="agent/a")
    async with hub.transport() as sender, hub.transport() as inbox:
        await inbox.subscribe(topics.coordinator_inbox("c"))
        outbox = Outbox(agent=AgentId("a"), codec=codec, publisher=Publisher(sender))
        loop = asyncio.create_task(outbox.publish_loop())
        try:
            messages = inbox.messages()
            outbox.started("c", started("fast"))
            await asyncio.sleep(START_GRACE / 4)
            outbox.finished("c", result("fast"))  # within the grace: only the result goes out
            only = codec.decode((await anext(messages)).payload).message
            outbox.started("c", started("slow"))  # no result follows: the start goes out after the grace
            late = codec.decode((await anext(messages)).payload).message
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    assert isinstance(only, TasksFinished) and [r.task for r in only.results] == ["fast"]
    assert isinstance(late, TasksStarted) and [t.task for t in late.tasks] == ["slow"]
