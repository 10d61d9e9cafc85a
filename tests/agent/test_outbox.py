"""The outbox: coalesced, ordered reports through the real codec."""

from __future__ import annotations

from dagon.agent._outbox import Outbox
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
