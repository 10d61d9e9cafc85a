"""A hand-made agent speaking the wire protocol with its own key: a stranger without enrolment,
or a compromised enrolled agent that lies in its reports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

from dagon.protocol import (
    AgentId,
    Announce,
    AssignTasks,
    Capabilities,
    Codec,
    Control,
    KeyRing,
    ResultStatus,
    Signer,
    TaskAssignment,
    TaskResult,
    TasksFinished,
    raw_public_key,
    topics,
)
from dagon.protocol.transport import MqttTransport


def capabilities(host_id: str = "rogue-host") -> Capabilities:
    return Capabilities(
        hostname="rogue", host_id=host_id, arch="x86_64", os="linux", cpus=64, memory=2**40,
        runtimes=("process", "python"), labels={}, slots=64, version="0",
    )  # fmt: skip


class Rogue:
    def __init__(self, url: str, agent: str, *, signer: Signer | None = None, coordinator_keys: KeyRing | None = None):
        self.url = url
        self.agent = AgentId(agent)
        self.signer = signer or Signer.generate()
        self.codec = Codec(sender=f"agent/{agent}", signer=self.signer)
        self.reader = Codec(sender=f"agent/{agent}", trust=coordinator_keys) if coordinator_keys else None
        self.received: list[bytes] = []
        self.assigned: list[TaskAssignment] = []
        self.caps: Capabilities | None = None

    @contextlib.asynccontextmanager
    async def online(self, caps: Capabilities | None = None, *, retain: bool = True) -> AsyncIterator[MqttTransport]:
        async with MqttTransport(self.url, client_id=f"rogue-{self.agent}") as transport:
            await transport.subscribe(topics.agent_tasks(self.agent), topics.agent_control(self.agent))
            self.caps = caps
            listener = asyncio.create_task(self._listen(transport))
            try:
                await self.announce(transport, caps, retain=retain)
                yield transport
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def announce(
        self, transport: MqttTransport, caps: Capabilities | None = None, *, retain: bool = True, answer: str = ""
    ) -> None:
        key = raw_public_key(self.signer.public_key)
        message = Announce(agent=self.agent, capabilities=caps or capabilities(), key=key, answer=answer)
        await transport.publish(topics.agent_status(self.agent), self.codec.encode(message), retain=retain)

    async def _listen(self, transport: MqttTransport) -> None:
        async for msg in transport.messages():
            if msg.topic == topics.agent_control(self.agent):
                # the coordinator's question (readable by any broker client): answer it like an agent
                with contextlib.suppress(Exception):
                    control = Codec(sender="rogue").decode(msg.payload).message
                    if isinstance(control, Control) and control.action == "announce":
                        await self.announce(transport, self.caps, answer=str(control.args.get("challenge", "")))
                continue
            self.received.append(msg.payload)
            if self.reader is not None:
                with contextlib.suppress(Exception):
                    message = self.reader.decode(msg.payload).message
                    if isinstance(message, AssignTasks):
                        self.assigned.extend(message.tasks)

    async def finish(self, transport: MqttTransport, coordinator: str, result: TaskResult) -> None:
        payload = self.codec.encode(TasksFinished(agent=self.agent, results=(result,)))
        await transport.publish(topics.coordinator_inbox(coordinator), payload)


def success(a: TaskAssignment, **changes: object) -> TaskResult:
    now = time.time()
    result = TaskResult(a.run, a.task, a.attempt, ResultStatus.SUCCEEDED, 0, now, now)
    return dataclasses.replace(result, **changes)  # type: ignore[arg-type]
