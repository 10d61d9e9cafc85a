"""The async coordinator: engine ↔ broker ↔ run store ↔ public API.

Loops (one TaskGroup, all named):
    * ``receive`` — decodes every message, feeds the engine, wakes ``drive``;
    * ``drive`` — coalesced: runs at most once per wake-up, fires timers,
      schedules ready tasks and executes the resulting commands;
    * ``public`` — publishes JSON run status, task results and events;
    * ``persist`` — writes transitions to the run store in batches.

Dispatch never waits for public publishing; a slow MQTT consumer cannot stall
scheduling. Scheduling is edge-triggered: nothing polls task status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Final, Self

from dagon.core._engine import Engine
from dagon.core._errors import ValidationError
from dagon.core._events import (
    AgentAnnounced,
    AgentChanged,
    AgentOffline,
    AgentSeen,
    CancelAttempt,
    Command,
    Dispatch,
    Event,
    RunCancelRequested,
    RunSubmitted,
    RunTransition,
    TaskFinished,
    TaskRejected,
    TaskStarted,
    TaskTransition,
    Tick,
)
from dagon.core._model import Workflow
from dagon.core._output import PublicOutput
from dagon.core._results import RunEvent, RunResult, task_result_doc
from dagon.core._states import TERMINAL, RunState, TaskState
from dagon.core._store import RunStore
from dagon.core._writer import StoreWriter
from dagon.protocol import (
    CONTENT_TYPE_JSON,
    SCHEMA_COORDINATOR,
    Ack,
    AgentId,
    Announce,
    AssignTasks,
    CancelRun,
    CancelTasks,
    Codec,
    Heartbeat,
    Offline,
    ProtocolError,
    Rejection,
    Rejections,
    RunId,
    SubmitRun,
    TaskAssignment,
    TaskRef,
    TasksFinished,
    TasksStarted,
    encode_public,
    topics,
)
from dagon.protocol.transport import Publisher, Transport, Will

__all__ = ["Coordinator", "new_run_id"]

log = logging.getLogger(__name__)

_MAX_BATCH: Final = 2000  # assignments per message


def new_run_id(workflow: str) -> RunId:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in workflow)[:40]
    return RunId(f"{safe}-{stamp}-{os.urandom(3).hex()}")


class Coordinator:
    """Runs workflows on the agents reachable through a broker.

    Args:
        connect: builds the (unopened) transport given the coordinator's Last Will.
        coordinator_id: names the inbox topic agents and clients write to.
        store: run store (None: keep nothing on disk).
        heartbeat_ttl: seconds of silence after which an agent counts as lost.
        publish_results: publish retained per-task JSON results and events.
        max_message_size: limit for decoded messages.
    """

    def __init__(
        self,
        *,
        connect: Callable[[Will], Transport],
        coordinator_id: str = "main",
        store: RunStore | None = None,
        heartbeat_ttl: float = 15.0,
        publish_results: bool = True,
        max_message_size: int | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.id = coordinator_id
        self.engine = engine or Engine(heartbeat_ttl=heartbeat_ttl)
        self.store = store
        self.publish_results = publish_results
        codec_args: dict[str, Any] = {"sender": f"coordinator/{coordinator_id}"}
        if max_message_size is not None:
            codec_args["max_size"] = max_message_size
        self.codec = Codec(**codec_args)
        will = Will(
            topics.coordinator_status(coordinator_id),
            encode_public({"schema": SCHEMA_COORDINATOR, "id": coordinator_id, "online": False}),
        )
        self._transport = connect(will)
        self._publisher = Publisher(self._transport)
        self._tg: asyncio.TaskGroup | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._pending: list[Command] = []
        self._writer = StoreWriter(store) if store is not None else None
        self._watchers: dict[RunId, list[asyncio.Queue[RunEvent | None]]] = defaultdict(list)
        self._waiters: dict[RunId, asyncio.Future[RunResult]] = {}
        self._output = PublicOutput(
            self._transport, coordinator_id=coordinator_id, results=publish_results, wake=self._wake.set
        )
        self._agents_changed = asyncio.Event()
        self._seen_ids: dict[str, None] = {}
        self._rejections = Rejections(log)
        self.rejections = self._rejections.counts
        self.metrics: Any = None  # a CoordinatorMetrics (dagon.core._metrics) once bound

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._transport.__aenter__()
        try:
            await self._transport.subscribe(
                topics.all_agent_status(), topics.all_agent_telemetry(), topics.coordinator_inbox(self.id)
            )
            await self._transport.publish(
                topics.coordinator_status(self.id),
                encode_public({"schema": SCHEMA_COORDINATOR, "id": self.id, "online": True, "since": time.time()}),
                retain=True,
                content_type=CONTENT_TYPE_JSON,
            )
            self._tg = asyncio.TaskGroup()
            await self._tg.__aenter__()
            self._loops = [
                self._tg.create_task(self._receive_loop(), name="coordinator-receive"),
                self._tg.create_task(self._drive_loop(), name="coordinator-drive"),
                self._tg.create_task(self._output.run(), name="coordinator-public"),
                *(
                    [self._tg.create_task(self._writer.run(), name="coordinator-store-writer")]
                    if self._writer is not None
                    else []
                ),
                self._tg.create_task(self._reannounce_loop(), name="coordinator-reannounce"),
            ]
        except BaseException:
            await self._transport.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._tg is not None:
                await self._flush()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await self._publisher.drain()
                        await self._output.drain()
                self._publisher.cancel()
                self._output.close()
                for task in self._loops:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._tg.__aexit__(None, None, None)
            with contextlib.suppress(Exception):
                await self._transport.publish(
                    topics.coordinator_status(self.id),
                    encode_public({"schema": SCHEMA_COORDINATOR, "id": self.id, "online": False}),
                    retain=True,
                    content_type=CONTENT_TYPE_JSON,
                )
        finally:
            for queues in self._watchers.values():
                for q in queues:
                    q.put_nowait(None)
            await self._transport.__aexit__(et, e, tb)

    async def _flush(self) -> None:
        """Let queued public messages and store writes go out (bounded wait)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._output.drain()
                if self._writer is not None:
                    await self._writer.drain()

    # -- public API ----------------------------------------------------------

    async def submit(self, workflow: Workflow, *, run_id: RunId | None = None) -> RunId:
        """Validate and start a run; raises ValidationError before anything runs."""
        graph = workflow.graph()
        run = run_id or new_run_id(workflow.name)
        if self.store is not None:
            await asyncio.to_thread(self.store.create_run, run, workflow.name, workflow.to_dict(), time.time())
        self._feed(RunSubmitted(run, workflow, graph))
        return run

    async def cancel(self, run: RunId, reason: str = "cancelled by user") -> None:
        self.engine.run(run)  # raises RunNotFound
        self._feed(RunCancelRequested(run, reason))

    async def wait(self, run: RunId) -> RunResult:
        view = self.engine.run(run)
        if view.state is not RunState.RUNNING:
            return RunResult.from_view(view)
        fut = self._waiters.get(run)
        if fut is None:
            fut = self._waiters[run] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(fut)

    async def events(self, run: RunId) -> AsyncIterator[RunEvent]:
        """Every state change of the run from now on, ending with the run's end."""
        view = self.engine.run(run)
        if view.state is not RunState.RUNNING:
            return
        queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
        self._watchers[run].append(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            with contextlib.suppress(ValueError):
                self._watchers[run].remove(queue)

    def result(self, run: RunId) -> RunResult:
        return RunResult.from_view(self.engine.run(run))

    @property
    def agents_online(self) -> int:
        return sum(1 for a in self.engine.agents.values() if a.online)

    async def wait_for_agents(self, count: int = 1) -> None:
        """Wait until ``count`` agents are online (bound it with ``asyncio.timeout``)."""
        while self.agents_online < count:
            self._agents_changed.clear()
            await self._agents_changed.wait()

    # -- internals: input ----------------------------------------------------

    def _feed(self, event: Event) -> None:
        self._pending.extend(self.engine.handle(event, time.time()))
        self._wake.set()

    async def _receive_loop(self) -> None:
        handled = 0
        async for msg in self._transport.messages():
            try:
                self._on_message(msg.topic, msg.payload)
            except ProtocolError as exc:
                self._rejections(msg.topic, exc.reason, str(exc))
            except ValidationError as exc:
                self._rejections(msg.topic, "invalid", str(exc))
            handled += 1
            if handled % 256 == 0:
                await asyncio.sleep(0)  # let drive/public loops run under sustained load

    def _on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) == 5 and parts[2] == "agents":
            agent = AgentId(topics.unescape_level(parts[3]))
            if not payload:
                return  # a cleared retained status
            env = self.codec.decode(payload)
            msg = env.message
            if parts[4] == "status" and isinstance(msg, Announce) and msg.agent == agent:
                self._feed(AgentAnnounced(agent, msg.capabilities))
            elif parts[4] == "status" and isinstance(msg, Offline) and msg.agent == agent:
                self._feed(AgentOffline(agent, msg.reason or "offline"))
            elif parts[4] == "telemetry" and isinstance(msg, Heartbeat) and msg.agent == agent:
                self._pending.extend(self.engine.handle(AgentSeen(agent, held=msg.running), time.time()))
                self._wake.set()
            else:
                raise ProtocolError(f"{msg.OP} is not accepted on {topic}", reason="unexpected")
            return
        env = self.codec.decode(payload)
        if env.id in self._seen_ids:
            return  # duplicate delivery (QoS 1 is at-least-once)
        self._remember(env.id)
        msg = env.message
        now = time.time()
        engine = self.engine
        pending = self._pending
        if isinstance(msg, TasksFinished):
            for result in msg.results:
                pending.extend(engine.handle(TaskFinished(msg.agent, result), now))
        elif isinstance(msg, TasksStarted):
            for started in msg.tasks:
                ref = TaskRef(started.run, started.task, started.attempt)
                pending.extend(engine.handle(TaskStarted(msg.agent, ref, started.started_at, started.workdir), now))
        elif isinstance(msg, Ack):
            for rejection in msg.rejected:
                pending.extend(engine.handle(TaskRejected(msg.agent, rejection), now))
        elif isinstance(msg, SubmitRun):
            self._remote_submit(msg)
        elif isinstance(msg, CancelRun):
            if msg.run in engine.runs:
                pending.extend(engine.handle(RunCancelRequested(msg.run, msg.reason or "cancelled by client"), now))
        else:
            raise ProtocolError(f"{msg.OP} is not accepted on the coordinator inbox", reason="unexpected")
        self._wake.set()

    def _remember(self, msg_id: str) -> None:
        seen = self._seen_ids
        seen[msg_id] = None
        if len(seen) > 50_000:
            for key in list(seen)[:25_000]:
                del seen[key]

    def _remote_submit(self, msg: SubmitRun) -> None:
        try:
            if msg.run in self.engine.runs:
                return
            workflow = Workflow.from_dict(msg.workflow)
            graph = workflow.graph()
        except ValidationError as exc:
            self._output.rejected(msg.run, str(exc))
            log.warning("rejected run %s: %s", msg.run, exc)
            return
        if self._writer is not None:
            self._writer.create_run(msg.run, workflow.name, workflow.to_dict(), time.time())
        self._pending.extend(self.engine.handle(RunSubmitted(msg.run, workflow, graph), time.time()))
        log.info("accepted run %s of workflow %s (%d tasks)", msg.run, workflow.name, len(workflow))

    # -- internals: drive ----------------------------------------------------

    async def _drive_loop(self) -> None:
        engine = self.engine
        while True:
            deadline = engine.next_deadline()
            if not self._wake.is_set():
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            self._wake.clear()
            now = time.time()
            commands, self._pending = self._pending, []
            if deadline is not None and deadline <= now:
                commands.extend(engine.handle(Tick(), now))
            commands.extend(engine.schedule(now))
            if commands:
                await self._execute(commands, now)

    async def _execute(self, commands: list[Command], now: float) -> None:
        assign: dict[AgentId, list[TaskAssignment]] = defaultdict(list)
        cancel: dict[AgentId, list[TaskRef]] = defaultdict(list)
        for cmd in commands:
            if isinstance(cmd, TaskTransition):
                self._on_transition(cmd)
            elif isinstance(cmd, Dispatch):
                assign[cmd.agent].append(cmd.assignment)
            elif isinstance(cmd, CancelAttempt):
                cancel[cmd.agent].append(cmd.ref)
            elif isinstance(cmd, RunTransition):
                self._on_run_transition(cmd)
            elif isinstance(cmd, AgentChanged):
                log.info("agent %s %s (%s)", cmd.agent, "online" if cmd.online else "offline", cmd.reason)
                self._agents_changed.set()
        self._output.flush(self.engine.runs, now)
        for agent, batch in assign.items():
            for i in range(0, len(batch), _MAX_BATCH):
                for payload in self._encode_assignments(agent, batch[i : i + _MAX_BATCH]):
                    await self._publisher.send(topics.agent_tasks(agent), payload)
        for agent, refs in cancel.items():
            payload = self.codec.encode(CancelTasks(tasks=tuple(refs), reason="run cancelled"))
            await self._publisher.send(topics.agent_tasks(agent), payload)
        if self._writer is not None:
            self._writer.flush_soon()

    def _encode_assignments(self, agent: AgentId, batch: list[TaskAssignment]) -> list[bytes]:
        """Encoded assignment messages; a task that cannot be encoded (e.g. over the
        message size limit) fails with the reason instead of stalling the others."""
        try:
            return [self.codec.encode(AssignTasks(reply_to=self.id, tasks=tuple(batch)))]
        except ProtocolError:
            pass
        payloads = []
        for assignment in batch:
            try:
                payloads.append(self.codec.encode(AssignTasks(reply_to=self.id, tasks=(assignment,))))
            except ProtocolError as exc:
                log.error("task %s of run %s cannot be sent: %s", assignment.task, assignment.run, exc)
                rejection = Rejection(task=assignment.ref, reason=f"cannot be sent: {exc}", permanent=True)
                self._pending.extend(self.engine.handle(TaskRejected(agent, rejection), time.time()))
                self._wake.set()
        return payloads

    def _on_transition(self, t: TaskTransition) -> None:
        run = t.run
        self._output.touch(run)
        # pending -> ready is derived state (all dependencies succeeded): it is neither
        # stored nor published, which halves the burst when a fan-out opens.
        derived = t.old is TaskState.PENDING and t.new is TaskState.READY
        if self._writer is not None and not derived:
            self._writer.transition((run, t.task, t.old.value, t.new.value, t.attempt, t.agent, t.cause, t.at))
        watchers = self._watchers.get(run)
        if watchers or (self.publish_results and not derived):
            event = RunEvent(run, t.task, t.new.value, t.old.value, t.attempt, t.agent, t.cause, t.at)
            if watchers:
                for queue in watchers:
                    queue.put_nowait(event)
            if not derived:
                self._output.event(event)
        if t.new in TERMINAL:
            view = self.engine.runs[run].tasks[t.task]
            if self.metrics is not None:
                self.metrics.task_ended(view)
            if self._writer is None and not self.publish_results:
                return
            payload = encode_public(task_result_doc(view))  # encoded once: stored and published
            if self._writer is not None:
                self._writer.task_row((run, t.task, t.new.value, t.attempt, t.agent, t.cause, payload.decode()))
            self._output.task_result(run, t.task, payload)

    def _on_run_transition(self, t: RunTransition) -> None:
        view = self.engine.runs[t.run]
        self._output.touch(t.run)
        event = RunEvent(t.run, None, t.new.value, None, 0, None, t.cause, t.at)
        self._output.event(event)
        if t.new is RunState.RUNNING:
            log.info("run %s started (%d tasks)", t.run, len(view.tasks))
            return
        log.info("run %s %s: %s", t.run, t.new.value, t.cause)
        if self._writer is not None:
            self._writer.run_state(t.run, t.new.value, t.cause, t.at)
        for queue in self._watchers.pop(t.run, ()):
            queue.put_nowait(event)
            queue.put_nowait(None)
        fut = self._waiters.pop(t.run, None)
        if fut is not None and not fut.done():
            fut.set_result(RunResult.from_view(view))

    def queue_depths(self) -> dict[str, int]:
        """Items waiting in the internal queues (for metrics)."""
        return {"public_output": self._output._queue.qsize(), "engine_commands": len(self._pending)}

    async def _reannounce_loop(self) -> None:
        while True:
            await self._transport.wait_reconnect()
            await self._transport.publish(
                topics.coordinator_status(self.id),
                encode_public({"schema": SCHEMA_COORDINATOR, "id": self.id, "online": True, "since": time.time()}),
                retain=True,
                content_type=CONTENT_TYPE_JSON,
            )
