"""The agent daemon: receives assignments, runs tasks, reports back.

Loops (one TaskGroup): ``receive`` (decode and act on tasks/control topics),
``heartbeat`` and ``outbox`` (coalesces started/finished reports per
coordinator: it waits for the first pending report and sends everything that
piled up meanwhile, so batching grows with load and adds no delay when idle).
Each task runs as a named child task of the same group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from dagon.agent._config import AgentConfig
from dagon.agent._host import capabilities
from dagon.agent._staging import StagingError, has_outputs, manifest, rewrite_command, safe_component, stage_inputs
from dagon.agent.runtimes import Outcome, PythonRuntime, run_process
from dagon.protocol import (
    Ack,
    AgentId,
    Announce,
    AssignTasks,
    CancelTasks,
    Codec,
    Control,
    Heartbeat,
    Offline,
    OutputFile,
    ProtocolError,
    Rejection,
    Rejections,
    ResultStatus,
    StartedTask,
    TaskAssignment,
    TaskRef,
    TaskResult,
    TasksFinished,
    TasksStarted,
    topics,
)
from dagon.protocol.transport import Publisher, Transport, Will

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    """A dagon agent.

    Args:
        config: validated settings (see :func:`load_agent_config`).
        connect: builds the (unopened) transport, given the agent's Last Will.
    """

    def __init__(self, *, config: AgentConfig, connect: Callable[[Will], Transport]) -> None:
        self.config = config
        self.id = AgentId(config.agent_id)
        self.codec = Codec(sender=f"agent/{config.agent_id}", max_size=config.max_message_size)
        self.capabilities = capabilities(config)
        will = Will(topics.agent_status(self.id), self.codec.encode(Offline(agent=self.id, reason="connection lost")))
        self._transport = connect(will)
        self._publisher = Publisher(self._transport)
        self._rejections = Rejections(log)
        self.rejections = self._rejections.counts
        self._running: dict[TaskRef, asyncio.Task[None]] = {}  # running and queued
        self._slots = asyncio.Semaphore(config.slots)
        self._started: dict[str, list[StartedTask]] = defaultdict(list)
        self._finished: dict[str, list[TaskResult]] = defaultdict(list)
        self._outbox_wake = asyncio.Event()
        self._outbox_idle = asyncio.Event()
        self._outbox_idle.set()
        self._python = PythonRuntime(pool=config.python_pool, workers=config.workers)
        self._tg: asyncio.TaskGroup | None = None
        self._loops: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()
        self.completed = 0

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.config.scratch.mkdir(parents=True, exist_ok=True)
        await self._transport.__aenter__()
        try:
            await self._transport.subscribe(topics.agent_tasks(self.id), topics.agent_control(self.id))
            await self._announce()
            self._tg = asyncio.TaskGroup()
            await self._tg.__aenter__()
            self._loops = [
                self._tg.create_task(self._receive_loop(), name=f"agent-{self.id}-receive"),
                self._tg.create_task(self._heartbeat_loop(), name=f"agent-{self.id}-heartbeat"),
                self._tg.create_task(self._outbox_loop(), name=f"agent-{self.id}-outbox"),
                self._tg.create_task(self._reannounce_loop(), name=f"agent-{self.id}-reannounce"),
            ]
        except BaseException:
            await self._transport.__aexit__(None, None, None)
            raise
        log.info("agent %s online: %d slots, runtimes %s", self.id, self.config.slots, self.capabilities.runtimes)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            running = list(self._running.values())
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)  # each one kills and reaps its processes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._drain_outbox()
            for loop in self._loops:
                loop.cancel()
            if self._tg is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._tg.__aexit__(None, None, None)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    payload = self.codec.encode(Offline(agent=self.id, reason="shutdown"))
                    await self._transport.publish(topics.agent_status(self.id), payload, retain=True)
        finally:
            self._python.close()
            await self._transport.__aexit__(et, e, tb)
            self.stopped.set()

    async def serve_forever(self) -> None:
        await self.stopped.wait()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (the caller then leaves the context)."""
        self.stopped.set()

    async def _reannounce_loop(self) -> None:
        # A restarted broker forgets retained messages and has published our Last
        # Will: tell every coordinator again that we are here.
        while True:
            await self._transport.wait_reconnect()
            log.info("re-announcing agent %s after reconnecting", self.id)
            await self._announce()

    async def _announce(self) -> None:
        payload = self.codec.encode(Announce(agent=self.id, capabilities=self.capabilities))
        await self._transport.publish(topics.agent_status(self.id), payload, retain=True)

    # -- receiving ---------------------------------------------------------------

    async def _receive_loop(self) -> None:
        tasks_topic = topics.agent_tasks(self.id)
        control_topic = topics.agent_control(self.id)
        async for msg in self._transport.messages():
            try:
                message = self.codec.decode(msg.payload).message
                if msg.topic == tasks_topic and isinstance(message, AssignTasks):
                    await self._on_assign(message)
                elif msg.topic == tasks_topic and isinstance(message, CancelTasks):
                    self._on_cancel(message)
                elif msg.topic == control_topic and isinstance(message, Control):
                    await self._on_control(message)
                else:
                    raise ProtocolError(f"{message.OP} is not accepted on {msg.topic}", reason="unexpected")
            except ProtocolError as exc:
                self._rejections(msg.topic, exc.reason, str(exc))

    async def _on_assign(self, message: AssignTasks) -> None:
        assert self._tg is not None
        rejected: list[Rejection] = []
        accepted = 0
        for assignment in message.tasks:
            ref = assignment.ref
            if ref in self._running:
                continue  # duplicate delivery
            if assignment.runtime not in self.capabilities.runtimes:
                reason = f"runtime {assignment.runtime!r} is not available on agent {self.id}"
                rejected.append(Rejection(task=ref, reason=reason, permanent=True))
                continue
            if len(self._running) >= self.config.slots + self.config.queue_depth:
                rejected.append(Rejection(task=ref, reason=f"all {self.config.slots} slots and the queue are busy"))
                continue
            accepted += 1
            self._running[ref] = self._tg.create_task(
                self._execute(assignment, message.reply_to), name=f"task-{assignment.run}-{assignment.task}"
            )
        if rejected:
            payload = self.codec.encode(Ack(agent=self.id, accepted=accepted, rejected=tuple(rejected)))
            await self._transport.publish(topics.coordinator_inbox(message.reply_to), payload)

    def _on_cancel(self, message: CancelTasks) -> None:
        for ref in message.tasks:
            task = self._running.get(ref)
            if task is not None:
                log.info("cancelling %s/%s attempt %d: %s", ref.run, ref.task, ref.attempt, message.reason)
                task.cancel()

    async def _on_control(self, message: Control) -> None:
        if message.action == "shutdown":
            log.warning("shutdown requested over the control topic")
            self.stop()
        elif message.action == "announce":
            await self._announce()
        else:
            raise ProtocolError(f"unknown control action {message.action!r}", reason="value")

    # -- running -------------------------------------------------------------------

    async def _execute(self, a: TaskAssignment, reply_to: str) -> None:
        try:
            async with self._slots:
                await self._execute_in_slot(a, reply_to)
        except asyncio.CancelledError:
            if a.ref in self._running:  # cancelled while still queued: never started
                self._running.pop(a.ref, None)
                now = time.time()
                result = TaskResult(a.run, a.task, a.attempt, ResultStatus.CANCELLED, None, now, now, error="cancelled")
                self._finished[reply_to].append(result)
                self._outbox_wake.set()
            raise

    async def _execute_in_slot(self, a: TaskAssignment, reply_to: str) -> None:
        started = time.time()
        workdir = ""
        outcome: Outcome | None = None
        outputs: tuple[OutputFile, ...] = ()
        try:
            needs_dir = a.runtime != "python" or bool(a.inputs)
            path: Path | None = None
            if needs_dir:
                # Created by the runtime's worker thread (or by staging), not on the event loop.
                task_dir = f"{safe_component(a.task, 'task')}-{a.attempt}"
                path = self.config.scratch / safe_component(a.run, "run") / task_dir
                workdir = str(path)
            self._started[reply_to].append(StartedTask(a.run, a.task, a.attempt, started, workdir))
            self._outbox_wake.set()
            command = a.command
            if a.inputs:
                assert path is not None
                staged = await asyncio.to_thread(
                    stage_inputs,
                    a.inputs,
                    path,
                    host_id=self.capabilities.host_id,
                    mode=a.stage_mode or self.config.stage_mode,
                )
                command = rewrite_command(command, staged)
            if a.runtime == "python":
                outcome = await self._python.run(a.command, a.args, a.kwargs, time_limit=a.timeout)
            else:
                assert path is not None
                outcome = await self._run_shell(a, command, path)
                if has_outputs(path):  # hashing happens off the loop; empty workdirs skip the hop
                    outputs = await asyncio.to_thread(manifest, path, a.outputs)
        except asyncio.CancelledError:
            outcome = Outcome(ResultStatus.CANCELLED, None, error="cancelled")
            raise
        except StagingError as exc:
            outcome = Outcome(ResultStatus.ERROR, None, error=str(exc))
        except Exception as exc:
            log.exception("task %s/%s failed inside the agent", a.run, a.task)
            outcome = Outcome(ResultStatus.ERROR, None, error=f"agent error: {type(exc).__name__}: {exc}")
        finally:
            assert outcome is not None
            self._running.pop(a.ref, None)
            self.completed += 1
            self._finished[reply_to].append(
                TaskResult(
                    run=a.run,
                    task=a.task,
                    attempt=a.attempt,
                    status=outcome.status,
                    exit_code=outcome.exit_code,
                    started_at=started,
                    finished_at=time.time(),
                    cpu_time=outcome.cpu_time,
                    max_rss=outcome.max_rss,
                    stderr_tail=outcome.stderr_tail,
                    error=outcome.error,
                    workdir=workdir,
                    outputs=outputs,
                    value=outcome.value,
                )
            )
            self._outbox_wake.set()

    async def _run_shell(self, a: TaskAssignment, command: str, path: Path) -> Outcome:
        meta = path / ".dagon"
        env = dict(os.environ)
        env.update(a.env)
        env.update(DAGON_RUN=a.run, DAGON_TASK=a.task, DAGON_ATTEMPT=str(a.attempt), DAGON_WORKDIR=str(path))
        outcome = await run_process(
            command,
            cwd=path,
            env=env,
            stdout=meta / "stdout",
            stderr=meta / "stderr",
            time_limit=a.timeout,
            record=meta / "command",
        )
        return outcome

    # -- reporting -------------------------------------------------------------------

    async def _outbox_loop(self) -> None:
        while True:
            await self._outbox_wake.wait()
            self._outbox_wake.clear()
            self._outbox_idle.clear()
            started, self._started = self._started, defaultdict(list)
            finished, self._finished = self._finished, defaultdict(list)
            for coordinator in started.keys() | finished.keys():
                inbox = topics.coordinator_inbox(coordinator)
                # "started" goes first: a coordinator never sees a result before its start.
                if started.get(coordinator):
                    payload = self.codec.encode(TasksStarted(agent=self.id, tasks=tuple(started[coordinator])))
                    await self._publisher.send(inbox, payload)
                if finished.get(coordinator):
                    payload = self.codec.encode(TasksFinished(agent=self.id, results=tuple(finished[coordinator])))
                    await self._publisher.send(inbox, payload)
            if not self._outbox_wake.is_set():
                self._outbox_idle.set()

    async def _drain_outbox(self) -> None:
        """Return once every queued report has been published."""
        while self._outbox_wake.is_set() or not self._outbox_idle.is_set():
            self._outbox_wake.set()
            await self._outbox_idle.wait()
            await asyncio.sleep(0)
        await self._publisher.drain()

    async def _heartbeat_loop(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            seq += 1
            running = len(self._running)
            beat = Heartbeat(agent=self.id, seq=seq, running=running, free_slots=self.config.slots - running)
            await self._transport.publish(topics.agent_telemetry(self.id), self.codec.encode(beat), qos=0)
