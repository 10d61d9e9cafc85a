"""The agent daemon: receives assignments, runs tasks, reports back.

One ``TaskGroup`` owns the loops — ``receive`` (decode and act on the tasks and
control topics), ``heartbeat``, ``outbox`` (coalesced reports, see
:mod:`dagon.agent._outbox`) and ``reannounce`` (after a broker reconnect) — and
one child task per accepted assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self

from dagon.agent._beat import BeatTimer
from dagon.agent._clock import LATE_ASSIGNMENT, CoordinatorClock, say
from dagon.agent._config import AgentConfig, check_scratch_reachable
from dagon.agent._dataops import DataOps
from dagon.agent._detached import DetachedRecords
from dagon.agent._host import capabilities
from dagon.agent._idlock import IdLock
from dagon.agent._lifeline import Lifeline
from dagon.agent._outbox import Outbox
from dagon.agent._private import private_dir
from dagon.agent._redeliver import Redelivery, drop_undeliverable
from dagon.agent._replay import ReplayRecord
from dagon.agent._runner import TaskRunner
from dagon.agent._secrets import environ_secrets
from dagon.agent._spool import ResultSpool
from dagon.agent._staging import mark_scratch_root
from dagon.agent._telemetry import TelemetryService, telemetry_service
from dagon.agent.runtimes import PythonRuntime, Runtime
from dagon.agent.sensors import TopicFeed
from dagon.agent.sensors._wiring import DEVICE_RUNTIMES, device_runtimes_for
from dagon.protocol import (
    DEFAULT_FRESHNESS,
    Ack,
    AgentId,
    Announce,
    AssignTasks,
    CancelTasks,
    Codec,
    ConfigError,
    Control,
    DagonError,
    DeleteData,
    Heartbeat,
    KeyRing,
    Offline,
    ProtocolError,
    Rejection,
    Rejections,
    ReplayGuard,
    ResultsStored,
    ResultStatus,
    RevokeGrants,
    Signer,
    TaskAssignment,
    TaskProgress,
    TaskRef,
    TaskResult,
    TimeAnswer,
    UploadOutputs,
    raw_public_key,
    read_grant,
    topics,
)
from dagon.protocol._gc import tune_gc
from dagon.protocol.transport import Incoming, Publisher, Transport, Will

__all__ = ["Agent"]

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 5.0
MAX_HELD = 1000  # attempts listed in a heartbeat (beyond: the list is marked incomplete)


class Agent:
    """A dagon agent: an async context manager that serves until stopped.

    Example::

        async with Agent(config=config, connect=lambda will: MqttTransport(url, will=will)) as agent:
            await agent.serve_forever()

    Args:
        config: validated settings (see :func:`load_agent_config`).
        connect: builds the (unopened) transport, given the agent's Last Will
            (a retained ``Offline`` on its status topic).
        runtimes: runtimes besides ``process`` and ``python`` (containers, jobs …).
        signer: the agent's key; signs everything it reports.
        trust: the coordinator keys whose signed tasks and control messages it obeys.
        insecure: allow running without ``signer``/``trust`` (development only:
            anyone who can publish to the broker can then make this agent run anything).

    Attributes:
        id: the agent id.
        capabilities: what the agent announces.
        rejections: refused incoming messages, counted by reason.
        stopped: set once a stop was asked for (``stop()``, a ``shutdown`` control
            message) or the agent shut down.
        completed: attempts finished so far.
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        connect: Callable[[Will], Transport],
        runtimes: Sequence[Runtime] = (),
        signer: Signer | None = None,
        trust: KeyRing | None = None,
        insecure: bool = False,
    ) -> None:
        if (signer is None or trust is None) and not insecure:
            raise ValueError(
                "an agent signs its reports and obeys only signed tasks: pass signer= and trust="
                " (see dagon._keys), or insecure=True for development"
            )
        self.config = config
        self.id = AgentId(config.agent_id)
        self.clock = CoordinatorClock(self.id)  # measured against each coordinator it works for
        # Accepted command ids outlive the process: a captured command replayed after a restart is refused.
        self._replayed = ReplayRecord(config.home / f"replay-{config.agent_id}.sqlite", window=DEFAULT_FRESHNESS)
        self.codec = Codec(
            sender=f"agent/{config.agent_id}", max_size=config.max_message_size, signer=signer, trust=trust,
            replay=ReplayGuard(on_accept=self._replayed.add), recipient=f"agent/{config.agent_id}",
        )  # fmt: skip
        self._key = raw_public_key(signer.public_key) if signer is not None else b""
        names = [r.name for r in runtimes]
        if len(set(names)) != len(names) or {"process", "python", *DEVICE_RUNTIMES} & set(names):
            raise ValueError(f"runtime names must be unique and not process, python, sensor or actuator, got {names}")
        # Every report names this process's session: a replayed report of an earlier one is ignored.
        self.session = os.urandom(8).hex()
        lost = Offline(agent=self.id, reason="connection lost", session=self.session)
        will = Will(topics.agent_status(self.id), self.codec.encode(lost))
        self._transport = connect(will)
        self.sensors = TopicFeed(self._transport)  # mqtt:// sensor sources share the agent's connection
        device_runtimes = device_runtimes_for(self.id, self._transport, self.sensors)
        self._runtimes = {r.name: r for r in [*runtimes, *device_runtimes]}
        self.capabilities = capabilities(config, [*names, *DEVICE_RUNTIMES])
        self._publisher = Publisher(self._transport)
        # Results are durable before they are sent and kept until their coordinator stored them.
        self.spool = ResultSpool(
            config.spool_file,
            agent=self.id,
            max_results=config.spool_max_results,
            max_bytes=config.spool_max_bytes,
            resend_after=config.spool_resend_after,
            max_telemetry=config.telemetry_spool,
        )
        self._outbox = Outbox(agent=self.id, codec=self.codec, publisher=self._publisher, spool=self.spool)
        self._redelivery = Redelivery(
            spool=self.spool, outbox=self._outbox, transport=self._transport, max_age=config.spool_max_age
        )
        self._reject = Rejections(log)
        self.rejections: Counter[str] = self._reject.counts
        self._python = PythonRuntime(pool=config.python_pool, workers=config.workers)
        self._lock = IdLock(config.home, config.agent_id)
        # Nothing a task starts outlives this agent (see dagon.agent._keeper).
        self.lifeline = Lifeline(config.home / f"tasks-{config.agent_id}.pids", agent=config.agent_id)
        self._runner = TaskRunner(
            config=config,
            host_id=self.capabilities.host_id,
            python=self._python,
            runtimes=self._runtimes,
            secrets=environ_secrets(config.secrets_file),
            lifeline=self.lifeline,
            signer=signer,
        )
        grant_keys = trust.by_id if trust is not None else None
        self._dataops = DataOps(
            config, self._runner, busy=lambda: self._tasks.keys(), spawn=self._spawn,
            # a grant whose consumer attempt ended is refused (RevokeGrants), across restarts too
            authorize=lambda token: self._replayed.admit_grant(read_grant(token, grant_keys)),
        )  # fmt: skip
        self._data = self._dataops.server
        self._detached = DetachedRecords(config.home / f"detached-{config.agent_id}", agent=config.agent_id)
        self._tasks: dict[TaskRef, asyncio.Task[None]] = {}  # accepted: running or waiting for a slot
        self._queued: dict[TaskRef, str] = {}  # waiting for a slot → coordinator to report to
        self._slots = asyncio.Semaphore(config.slots)
        self._active = 0
        self._tg: asyncio.TaskGroup | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._stop_lock = asyncio.Lock()
        self._down = False
        self.stopped = asyncio.Event()
        self.completed = 0
        self.telemetry: TelemetryService | None = telemetry_service(config, self.id, lambda: self._active)
        sampling = self.telemetry
        self._beats = BeatTimer(config.heartbeat_interval, lambda: sampling.next_sample_at if sampling else None)
        self.metrics: Any = None  # an AgentMetrics (dagon.agent._exporter) when an exporter runs
        self._runtime_of: dict[TaskRef, str] = {}  # for metrics: runtime of each accepted attempt
        self._only: str | None = None  # see serve_only()

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        tune_gc()  # a long-lived loop: see dagon.protocol._gc
        await asyncio.to_thread(private_dir, self.config.home)
        await asyncio.to_thread(self._lock.acquire)  # one process per id and home: before anything else
        try:
            await self._enter()
        except BaseException:
            self._lock.release()
            raise
        return self

    async def _enter(self) -> None:
        # What a previous life with this id left running dies before anything is announced.
        await self.lifeline.start()
        try:
            await self._open()
        except BaseException:
            await self.lifeline.close()
            raise

    async def _open(self) -> None:
        await asyncio.to_thread(self.config.scratch.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(mark_scratch_root, self.config.scratch)
        if self.config.run_as:
            await asyncio.to_thread(check_scratch_reachable, self.config.scratch, self.config.run_as)
        try:
            await self.spool.open()
            seen = await asyncio.to_thread(self._replayed.open)
            self.codec.replay.seed(seen, floor=self._replayed.floor)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the result spool {self.config.spool_file} or the replay record {self._replayed.path}:"
                f" {exc}; fix their directory's permissions or set spool_path (DAGON_SPOOL)"
            ) from exc
        data_url = ""
        if self.config.serve_data:
            await self._data.__aenter__()
            data_url = self.config.data_url or self._data.url
        self.capabilities = dataclasses.replace(
            self.capabilities, data_url=data_url, reachable=self.config.reachable, ssh_url=self.config.ssh_url or "",
            checkpoint_store=self.config.checkpoint_store and bool(data_url),
        )  # fmt: skip
        try:
            await self._transport.__aenter__()
        except BaseException:
            await self._data.__aexit__(None, None, None)
            await self.spool.close()
            raise
        try:
            await self._transport.subscribe(topics.agent_tasks(self.id), topics.agent_control(self.id))
            if self.telemetry is not None and self.telemetry.meter_topic:
                await self._transport.subscribe(self.telemetry.meter_topic)
            await self._announce()
            self._tg = asyncio.TaskGroup()
            await self._tg.__aenter__()
        except BaseException:
            await self._runner.close_runtimes()
            await self._transport.__aexit__(None, None, None)
            await self._data.__aexit__(None, None, None)
            await self.spool.close()
            raise
        name = f"agent-{self.id}"
        await self._resume_detached()  # before the first heartbeat, which lists them as held
        self._receiver = self._tg.create_task(self._receive_loop(), name=f"{name}-receive")
        self._loops = [
            self._tg.create_task(self._heartbeat_loop(), name=f"{name}-heartbeat"),
            self._tg.create_task(self._outbox.publish_loop(), name=f"{name}-outbox"),
            self._tg.create_task(self._reannounce_loop(), name=f"{name}-reannounce"),
            self._tg.create_task(self.spool.prune_loop(), name=f"{name}-spool"),
            self._tg.create_task(self.spool.checkpoint_loop(), name=f"{name}-spool-checkpoints"),
            self._tg.create_task(self._redelivery.resend_loop(), name=f"{name}-redeliver"),
        ]
        if self.telemetry is not None:
            telemetry = self.telemetry.sample_loop(self._transport, self.codec, spool=self.spool, ride=self._beats.ride)
            self._loops.append(self._tg.create_task(telemetry, name=f"{name}-telemetry"))
        log.info("agent %s online: %d slots, runtimes %s", self.id, self.config.slots, self.capabilities.runtimes)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.stop()
            if self._tg is not None:  # every child has ended: this only collects them
                await self._tg.__aexit__(None, None, None)
        finally:
            try:
                await self._transport.__aexit__(et, e, tb)
            finally:
                try:
                    await self._data.__aexit__(None, None, None)
                finally:
                    self._lock.release()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        self._tg.create_task(work, name=name)

    async def serve_forever(self) -> None:
        """Return once the agent is asked to stop (then leave the ``async with`` block)."""
        await self.stopped.wait()

    async def stop(self) -> None:
        """Shut down gracefully; idempotent.

        Stops accepting work, kills and reaps running tasks (reported CANCELLED),
        publishes the pending reports and a retained ``Offline(reason="shutdown")``.
        Leaving the ``async with`` block calls it and then closes the transport.
        """
        self.stopped.set()
        async with self._stop_lock:
            if self._down:
                return
            await self._shut_down()
            self._down = True

    async def _shut_down(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.wait([self._receiver])
        running = list(self._tasks.values())
        for ref in list(self._tasks):
            self._cancel(ref, "the agent is shutting down")
        if running:
            log.info("agent %s stopping: killing %d task(s)", self.id, len(running))
            await asyncio.wait(running)  # each one kills and reaps its processes, then reports
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await self._outbox.flush()
                await self._publisher.drain()
        except TimeoutError:
            log.warning("agent %s: reports still unpublished after %.0f s; giving up", self.id, SHUTDOWN_TIMEOUT)
        for loop in self._loops:
            loop.cancel()
        if self._loops:
            await asyncio.wait(self._loops)
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                payload = self.codec.encode(Offline(agent=self.id, reason="shutdown", session=self.session))
                await self._transport.publish(topics.agent_status(self.id), payload, retain=True)
        except (TimeoutError, DagonError) as exc:
            log.warning("agent %s: could not publish its offline status: %s", self.id, exc or "timeout")
        await self._runner.close_runtimes()
        await self.lifeline.close()
        if self._only is not None:
            drop_undeliverable(self.spool, self.id, lambda coordinator: True, "its coordinator ended with this process")
        await self.spool.close()
        self._replayed.close()
        if len(self.spool):
            log.warning("agent %s: %d result(s) not yet acknowledged stay in the spool %s for the next start",
                        self.id, len(self.spool), self.spool.path)  # fmt: skip
        log.info("agent %s stopped after %d task(s)", self.id, self.completed)

    def serve_only(self, coordinator: str) -> None:
        """Declare that this agent works for ``coordinator`` alone and that it lives and dies with
        this process (the embedded default): nothing else will ever acknowledge a result.

        The rule: results spooled for any other coordinator (a previous process's) are dropped
        now, and whatever ``coordinator`` has not acknowledged when the agent stops is dropped
        then. A warning names what is lost — finished work whose result never reached the run
        store (``dagon resume`` runs it again); cancelled attempts are dropped quietly.
        """
        self._only = coordinator
        drop_undeliverable(
            self.spool, self.id, lambda c: c != coordinator, "its coordinator ended with an earlier process"
        )

    async def _announce(self, answer: str = "") -> None:
        announce = Announce(
            agent=self.id, capabilities=self.capabilities, key=self._key, session=self.session, answer=answer
        )
        payload = self.codec.encode(announce)
        await self._transport.publish(topics.agent_status(self.id), payload, retain=True)

    async def _reannounce_loop(self) -> None:
        # A restarted broker forgets retained messages and has published our Last
        # Will: tell every coordinator again that we are here.
        while True:
            await self._transport.wait_reconnect()
            log.info("re-announcing agent %s after reconnecting", self.id)
            with contextlib.suppress(DagonError):
                await self._announce()
            self._redelivery.reconnected()  # the broker may have lost results or their acknowledgements
            if self.telemetry is not None and self.spool.telemetry_backlog:
                self.telemetry.wake()  # what was sampled offline goes out now, in order

    async def _heartbeat_loop(self) -> None:
        seq = 0
        while True:
            sample = await self._beats.wait()  # the telemetry sample rides on the heartbeat
            seq += 1
            if seq % 100 == 0:
                self._replayed.prune()
            held = self.held()
            beat = Heartbeat(
                agent=self.id, seq=seq, running=self._active, free_slots=max(0, self.config.slots - self._active),
                held=tuple(held[:MAX_HELD]), complete=len(held) <= MAX_HELD, session=self.session, telemetry=sample,
            )  # fmt: skip
            try:
                await self._transport.publish(topics.agent_telemetry(self.id), self.codec.encode(beat), qos=0)
            except DagonError as exc:
                log.warning("agent %s: heartbeat %d not sent: %s", self.id, seq, exc)

    def status_line(self) -> str:
        """One line for ``systemctl status``: tasks and broker state."""
        connected = getattr(self._transport, "connected", True)
        queued = len(self._tasks) - self._active
        return (
            f"{self._active} running, {queued} queued, {self.completed} done;"
            f" {max(0, self.config.slots - self._active)}/{self.config.slots} slots free;"
            f" broker {'connected' if connected else 'unreachable, retrying'}"
        )

    def held(self) -> list[TaskRef]:
        """Attempts this agent holds: queued, running, or finished and not yet acknowledged."""
        return list(dict.fromkeys([*self._tasks, *self._outbox.holding(), *self.spool.refs()]))

    # -- receiving ---------------------------------------------------------------

    async def _receive_loop(self) -> None:
        async for msg in self._transport.messages():
            try:
                await self._handle(msg)
            except ProtocolError as exc:
                self._reject(msg.topic, exc.reason, str(exc))
            except Exception as exc:  # a bug handling one message must not end the agent
                log.exception("agent %s: error handling a message on %s", self.id, msg.topic)
                self._reject(msg.topic, "handler_error", f"{type(exc).__name__}: {exc}")

    async def _handle(self, msg: Incoming) -> None:
        if self.sensors.feed(msg.topic, msg.payload, retained=msg.retain):
            return  # a sensor publishing to the broker (an mqtt:// source of a running sensor task)
        if msg.retain:
            # A retained assignment or shutdown would act again on every restart.
            raise ProtocolError("retained messages are not accepted by agents", reason="retained")
        if self.telemetry is not None and self.telemetry.feed(msg.topic, msg.payload):
            return  # an external power meter's reading
        envelope = self.codec.decode(msg.payload, limit=topics.payload_limit(msg.topic))
        message = envelope.message
        if msg.topic == topics.agent_tasks(self.id):
            if isinstance(message, AssignTasks):
                if message.stored:  # acknowledgements riding along (see AssignTasks.stored)
                    self.spool.acknowledge(message.stored)
                await self._on_assign(message, sent=envelope.ts)
                return
            if isinstance(message, CancelTasks):
                self._on_cancel(message)
                return
            if isinstance(message, UploadOutputs):
                self._dataops.upload(message)
                return
            if isinstance(message, DeleteData):
                await self._dataops.delete(message)
                return
            if isinstance(message, ResultsStored):
                self.spool.acknowledge(message.tasks)
                return
            if isinstance(message, RevokeGrants):
                self._replayed.revoke(message.attempts, message.until)
                return
        elif msg.topic == topics.agent_control(self.id) and isinstance(message, Control):
            await self._on_control(message)
            return
        elif msg.topic == topics.agent_control(self.id) and isinstance(message, TimeAnswer):
            if (sample := self.clock.answer(message)) is not None:
                say(sample, self.id, log)
            return
        raise ProtocolError(f"{message.OP!r} messages are not accepted on {msg.topic}", reason="unexpected")

    async def _on_assign(self, message: AssignTasks, *, sent: float) -> None:
        assert self._tg is not None
        if self.clock.due(message.reply_to):  # a coordinator new to us, or not measured for a while
            query = self.codec.encode(self.clock.query(message.reply_to))
            await self._publisher.send(topics.coordinator_inbox(message.reply_to), query)
        age = self.clock.age(message.reply_to, sent)  # by the coordinator's clock (None: not measured yet)
        rejected: list[Rejection] = []
        accepted = 0
        capacity = self.config.slots + self.config.queue_depth
        for assignment in message.tasks:
            ref = assignment.ref
            if ref in self._tasks:
                continue  # the same attempt delivered again (QoS 1 is at-least-once)
            if self.spool.done(ref):
                # It ran here already: never run it twice; its result (if still unacknowledged) goes again.
                log.info("agent %s: %s/%s attempt %d already ran here; not running it again",
                         self.id, ref.run, ref.task, ref.attempt)  # fmt: skip
                self._redelivery.now(ref)
                continue
            if age is not None and age > LATE_ASSIGNMENT:  # its coordinator may have given it up: never run it
                reason = f"the assignment arrived {age:.0f} s after it was sent (over {LATE_ASSIGNMENT:.0f} s)"
                log.warning(
                    "agent %s: not running %s/%s attempt %d: %s", self.id, ref.run, ref.task, ref.attempt, reason
                )
                rejected.append(Rejection(task=ref, reason=reason))
                continue
            if assignment.runtime not in self.capabilities.runtimes:
                reason = f"runtime {assignment.runtime!r} is not available on agent {self.id}"
                rejected.append(Rejection(task=ref, reason=reason, permanent=True))
                continue
            if len(self._tasks) >= capacity:
                reason = f"all {self.config.slots} slots and {self.config.queue_depth} queue places are busy"
                rejected.append(Rejection(task=ref, reason=reason))
                continue
            if self.spool.full:
                reason = f"its result spool is full ({len(self.spool)} results not yet acknowledged)"
                rejected.append(Rejection(task=ref, reason=reason))
                continue
            accepted += 1
            if self.metrics is not None:
                self._runtime_of[ref] = assignment.runtime
            self._queued[ref] = message.reply_to
            self._tasks[ref] = self._tg.create_task(
                self._execute(assignment, message.reply_to), name=f"task-{assignment.run}-{assignment.task}"
            )
        if rejected:
            log.info("agent %s refused %d task(s) of an assignment", self.id, len(rejected))
            payload = self.codec.encode(Ack(agent=self.id, accepted=accepted, rejected=tuple(rejected)))
            await self._publisher.send(topics.coordinator_inbox(message.reply_to), payload)

    def _on_cancel(self, message: CancelTasks) -> None:
        for ref in message.tasks:
            self._cancel(ref, message.reason or "cancelled by the coordinator")

    async def _on_control(self, message: Control) -> None:
        if message.action == "shutdown":
            log.warning("agent %s: shutdown requested over the control topic", self.id)
            self.stopped.set()  # serve_forever returns; leaving the context shuts down
        elif message.action == "announce":  # a coordinator's question: only the live agent can answer it
            challenge = message.args.get("challenge", "")
            await self._announce(challenge if isinstance(challenge, str) and len(challenge) <= 64 else "")
        else:
            raise ProtocolError(f"unknown control action {message.action!r}", reason="unknown_action")

    # -- running -------------------------------------------------------------------

    async def _resume_detached(self) -> None:
        """Follow again the detached work (Slurm jobs) of the previous agent process (see ``_detached``)."""
        assert self._tg is not None
        for reply_to, a in await asyncio.to_thread(self._detached.load):
            if self.spool.done(a.ref) or not await asyncio.to_thread(self._runner.resumable, a):
                await asyncio.to_thread(self._detached.drop, a.ref)
                continue
            log.warning("agent %s: re-attaching to %s/%s attempt %d, started before this agent restarted",
                        self.id, a.run, a.task, a.attempt)  # fmt: skip
            self._queued[a.ref] = reply_to
            self._runtime_of[a.ref] = a.runtime
            self._tasks[a.ref] = self._tg.create_task(self._execute(a, reply_to, resume=True),
                                                      name=f"task-{a.run}-{a.task}")  # fmt: skip

    async def _execute(self, a: TaskAssignment, reply_to: str, *, resume: bool = False) -> None:
        async with self._slots:
            if self._queued.pop(a.ref, None) is None:
                return  # cancelled while waiting for the slot (already reported)
            self._active += 1
            runtime = self._runtimes.get(a.runtime)
            detached = runtime is not None and runtime.detached
            try:
                if detached and not resume:  # its job may outlive this process: the next one follows it
                    await asyncio.to_thread(self._detached.save, reply_to, a)
                await self._runner.run(
                    a,
                    on_start=lambda item: self._outbox.started(reply_to, item),
                    on_finish=lambda result: self._finish(reply_to, result),
                    on_progress=lambda note: self._progress(reply_to, a, note),
                    resume=resume,
                )
            finally:
                self._active -= 1
                if detached:  # ended and reported (or cancelled: the job was scancelled); one tiny unlink
                    self._detached.drop(a.ref)

    async def _progress(self, reply_to: str, a: TaskAssignment, note: str) -> None:
        message = TaskProgress(agent=self.id, run=a.run, task=a.task, attempt=a.attempt, note=note)
        await self._publisher.send(topics.coordinator_inbox(reply_to), self.codec.encode(message))

    def _finish(self, reply_to: str, result: TaskResult) -> None:
        self._tasks.pop(TaskRef(result.run, result.task, result.attempt), None)
        self.completed += 1
        if self.telemetry is not None:
            result = self.telemetry.annotate(result)
        if self.metrics is not None:
            self.metrics.task_finished(
                result, self._runtime_of.pop(TaskRef(result.run, result.task, result.attempt), "?")
            )
        self._outbox.finished(reply_to, result)

    def _cancel(self, ref: TaskRef, reason: str) -> None:
        task = self._tasks.get(ref)
        if task is None:
            return
        log.info("cancelling %s/%s attempt %d: %s", ref.run, ref.task, ref.attempt, reason)
        task.cancel()
        reply_to = self._queued.pop(ref, None)
        if reply_to is not None:  # never started: its coroutine may not even run, so report here
            now = time.time()
            status = ResultStatus.CANCELLED
            self._finish(reply_to, TaskResult(ref.run, ref.task, ref.attempt, status, None, now, now, error=reason))
