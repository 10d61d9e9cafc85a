"""A fake coordinator driving a real Agent over the in-memory hub (real codec both ways)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from _keys import COORDINATOR, agent_security

from dagon.agent import Agent, AgentConfig, load_agent_config
from dagon.protocol import (
    AssignTasks,
    CancelTasks,
    Codec,
    Control,
    Message,
    RunId,
    TaskAssignment,
    TaskName,
    TaskRef,
    TaskResult,
    TasksFinished,
    topics,
)
from dagon.protocol.transport import MemoryHub, Transport

COORD = "c1"
AGENT = "ag"


class _ToAgent(Codec):
    """Addresses every message to the agent under test (as the coordinator does)."""

    __slots__ = ()

    def encode(self, message: Message, *, msg_id: str | None = None, to: str = f"agent/{AGENT}") -> bytes:
        return super().encode(message, msg_id=msg_id, to=to)


codec = _ToAgent(sender="coord", signer=COORDINATOR)  # the agent under test trusts this key
_M = TypeVar("_M", bound=Message)


def agent_config(tmp_path: Path, *, slots: int = 2, prefetch: int = 0, **flags: object) -> AgentConfig:
    base: dict[str, object] = {"id": AGENT, "slots": slots, "prefetch": prefetch, "scratch": str(tmp_path / "scratch")}
    return load_agent_config(config_file=None, env={"DAGON_HOME": str(tmp_path / "home")}, flags={**base, **flags})


def assign(task: str, command: str, *, runtime: str = "process", attempt: int = 1, **kw: Any) -> TaskAssignment:
    return TaskAssignment(RunId(kw.pop("run", "r1")), "wf", TaskName(task), attempt, runtime, command, **kw)


class FakeCoordinator:
    """Sends codec-encoded messages to the agent and records everything in its inbox, in order."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.seen: list[Message] = []
        self._messages = transport.messages()

    async def assign(self, *tasks: TaskAssignment) -> None:
        await self.raw(topics.agent_tasks(AGENT), codec.encode(AssignTasks(reply_to=COORD, tasks=tasks)))

    async def cancel(self, *refs: TaskRef) -> None:
        await self.raw(topics.agent_tasks(AGENT), codec.encode(CancelTasks(tasks=refs, reason="test")))

    async def control(self, action: str) -> None:
        await self.raw(topics.agent_control(AGENT), codec.encode(Control(action=action)))

    async def raw(self, topic: str, payload: bytes) -> None:
        await self.transport.publish(topic, payload)

    async def next(self, kind: type[_M], *, within: float = 10) -> _M:
        """The next inbox message of type ``kind`` (others are recorded and skipped)."""
        async with asyncio.timeout(within):
            while True:
                msg = await anext(self._messages)
                message = codec.decode(msg.payload).message
                self.seen.append(message)
                if isinstance(message, kind):
                    return message

    async def results(self, count: int, *, within: float = 20) -> dict[str, TaskResult]:
        """Results keyed by task name, once ``count`` have arrived."""
        found: dict[str, TaskResult] = {}
        async with asyncio.timeout(within):
            while len(found) < count:
                finished = await self.next(TasksFinished)
                found.update({r.task: r for r in finished.results})
        return found


@contextlib.asynccontextmanager
async def running_agent(hub: MemoryHub, tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Agent, FakeCoordinator]]:
    transport = hub.transport()
    async with transport:
        await transport.subscribe(topics.coordinator_inbox(COORD))
        agent = Agent(
            config=agent_config(tmp_path, **config), connect=lambda will: hub.transport(will=will), **agent_security()
        )
        async with agent as a:
            yield a, FakeCoordinator(transport)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


async def wait_for_pid(path: Path) -> int:
    """The pid a task wrote to ``path`` (waits for the file)."""
    async with asyncio.timeout(10):
        while not (text := _read(path)):
            await asyncio.sleep(0.01)
    return int(text)


async def wait_gone(*pids: int, within: float = 10) -> None:
    """Wait until ``os.kill(pid, 0)`` raises ProcessLookupError for every pid.

    A killed orphan stays a zombie until init reaps it, which some container
    inits do only every second or so: hence a wait, not an instant check.
    """
    async with asyncio.timeout(within):
        for pid in pids:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                await asyncio.sleep(0.05)
