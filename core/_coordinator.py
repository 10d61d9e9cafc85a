"""The async coordinator: lifecycle and public API; engine ↔ broker ↔ run store.

Its parts, one job each:
    * :mod:`~dagon.core._inbox` — what a received message means (pure ``route``);
    * :mod:`~dagon.core._dispatch` — the drive loop: engine commands become batched messages;
    * :mod:`~dagon.core._datasources` — grants, input sources, relay, checkpoint storage;
    * :mod:`~dagon.core._feed` — store rows, public output, watchers, waiters, listeners;
    * :mod:`~dagon.core._restore` — runs from the store back into the engine (restart, resume);
    * :class:`~dagon.protocol.transport.Channel` — topics, signing and encoding of what it sends.

Loops (one TaskGroup, all named):
    * ``receive`` — decodes every message, feeds the engine, wakes ``drive``;
    * ``drive`` — coalesced: runs at most once per wake-up, fires timers,
      schedules ready tasks and executes the resulting commands;
    * ``public`` — publishes JSON run status, task results and events;
    * ``reannounce`` — publishes the coordinator's status again after a broker reconnect.

Dispatch never waits for public publishing; a slow MQTT consumer cannot stall scheduling.
Scheduling is edge-triggered: nothing polls task status. Log grants for clients: ``_logdesk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from dagon.core._agent_telemetry import AgentTelemetry
from dagon.core._answers import Answers
from dagon.core._checks import admit
from dagon.core._datasources import DataSources
from dagon.core._dispatch import Dispatcher
from dagon.core._engine import Engine
from dagon.core._errors import RunNotFound, ValidationError
from dagon.core._events import RunCancelRequested, RunSubmitted
from dagon.core._feed import RunFeed
from dagon.core._freshness import ReportGate, Verdict, report_verdict
from dagon.core._inbox import (
    CancelRequested,
    Deduplicator,
    KeyAnnounced,
    LogsRequested,
    Progress,
    ResultsHeld,
    ResultsReceived,
    ResumeRequested,
    SubmitRequested,
    TelemetryReceived,
    TimeAsked,
    agent_topic,
    route,
)
from dagon.core._listeners import CoordinatorListener, notify
from dagon.core._logdesk import LogDesk
from dagon.core._model import Workflow
from dagon.core._output import PublicOutput
from dagon.core._restore import INTERRUPTED, Restorer
from dagon.core._results import RunEvent, RunResult
from dagon.core._retention import Retention
from dagon.core._runid import check_run_id
from dagon.core._states import RunState
from dagon.core._store import Store
from dagon.core._trust import CoordinatorTrust
from dagon.core._writer import StoreWriter
from dagon.protocol import (
    CONTENT_TYPE_JSON,
    DEFAULT_FRESHNESS,
    SCHEMA_COORDINATOR,
    Codec,
    Control,
    DeleteData,
    Envelope,
    ProtocolError,
    Rejections,
    ReplayGuard,
    RunId,
    Signer,
    StageInput,
    SubmitRun,
    TimeAnswer,
    encode_public,
    topics,
)
from dagon.protocol._gc import tune_gc
from dagon.protocol.transport import Channel, Transport, Will

__all__ = ["DEFAULT_REQUEUE_GRACE", "INTERRUPTED", "Coordinator", "new_run_id"]

log = logging.getLogger(__name__)

# Seconds the attempts of an agent whose Last Will arrived wait for it before running elsewhere:
# a restarting broker publishes every client's Will at once, and its agents are back within
# seconds, still running their tasks. A clean shutdown or a heartbeat timeout does not wait.
DEFAULT_REQUEUE_GRACE: Final = 10.0


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
        requeue_grace: seconds the attempts of an agent lost by its Last Will wait for it to
            come back before they run elsewhere (0: at once; see ``Engine``).
        publish_results: publish retained per-task JSON results and events.
        max_message_size: limit for decoded messages.
        signer: signs every message to agents (assignments, cancellations, control).
        trust: whose signatures are accepted on reports and submissions.
        insecure: allow running without ``signer``/``trust`` (development only:
            anyone who can publish to the broker can then forge results).
        relay_dir: where the relay keeps uploads of unreachable agents (``None``: none; their inputs cannot be staged).
        relay_host, relay_port: where the relay listens (loopback by default).
        relay_url: the URL agents use for it (default ``http://relay_host:port``).
        ephemeral: the coordinator lives inside a client process (``dagon run``): when it
            stops, runs it leaves unfinished are recorded as ``interrupted`` (``dagon resume``
            continues them) instead of ``running`` (which a restarted service resumes).
        replay: freshness window and replay cache for submissions, cancellations and resumes
            (``dagon coordinator`` passes one that keeps accepted ids on disk across restarts).
        relay_tls: serve the relay (and checkpoint storage) over HTTPS with this server
            context (agents verify it with their ``data_tls_ca``).
        checkpoint_dir: durable storage for the outputs of tasks marked ``checkpoint``
            (default: ``checkpoints`` next to ``relay_dir``). When such a task succeeds its
            agent uploads its outputs there (through the relay's server); consumers read them
            from there once that agent is gone, so they are never regenerated. Never expired:
            remove a finished run's directory when it is no longer needed.
        retention: when finished runs leave memory and their results the broker (default: ``Retention()``).
    """

    def __init__(
        self,
        *,
        connect: Callable[[Will], Transport],
        coordinator_id: str = "main",
        store: Store | None = None,
        heartbeat_ttl: float = 15.0,
        requeue_grace: float = DEFAULT_REQUEUE_GRACE,
        publish_results: bool = True,
        max_message_size: int | None = None,
        engine: Engine | None = None,
        signer: Signer | None = None,
        trust: CoordinatorTrust | None = None,
        insecure: bool = False,
        relay_dir: Path | None = None,
        relay_host: str = "127.0.0.1",
        relay_port: int = 0,
        relay_url: str | None = None,
        checkpoint_dir: Path | None = None,
        relay_tls: ssl.SSLContext | None = None,
        ephemeral: bool = False,
        replay: ReplayGuard | None = None,
        retention: Retention | None = None,
    ) -> None:
        if (signer is None or trust is None) and not insecure:
            raise ValueError(
                "a coordinator signs what it sends and verifies what it receives: pass signer= and trust="
                " (see dagon._keys), or insecure=True for development"
            )
        self.id = coordinator_id
        self.engine = engine or Engine(heartbeat_ttl=heartbeat_ttl, requeue_grace=requeue_grace)
        self.store = store
        codec_args: dict[str, Any] = {"sender": f"coordinator/{coordinator_id}", "signer": signer, "trust": trust}
        if max_message_size is not None:
            codec_args["max_size"] = max_message_size
        if replay is not None:  # e.g. one that remembers accepted ids across restarts (dagon coordinator)
            codec_args["replay"] = replay
        self.codec = Codec(**codec_args)
        self._gate = ReportGate(stale_after=max(heartbeat_ttl, DEFAULT_FRESHNESS))
        self._trust = trust
        self._ephemeral = ephemeral
        self._detached = False
        will = Will(
            topics.coordinator_status(coordinator_id),
            encode_public({"schema": SCHEMA_COORDINATOR, "id": coordinator_id, "online": False}),
        )
        self._transport = connect(will)
        self._channel = Channel(self._transport, self.codec)
        self._tg: asyncio.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._relay_open = False
        # Grants for the data plane; an --insecure coordinator signs them with a throwaway key
        # (its agents do not verify them, but scope and expiry still apply).
        self.data = DataSources(
            self.engine, signer=signer or Signer.generate(), relay_dir=relay_dir, relay_host=relay_host,
            relay_port=relay_port, relay_url=relay_url, relay_tls=relay_tls, checkpoint_dir=checkpoint_dir,
            spawn=self._spawn, holder=trust.key_of if trust is not None else None,
        )  # fmt: skip
        self._writer = StoreWriter(store) if store is not None else None
        self._agents_changed = asyncio.Event()
        output = PublicOutput(
            self._transport, coordinator_id=coordinator_id, results=publish_results, wake=self._wake_drive,
            agents=self.engine.agents, key_of=trust.key_of if trust is not None else None,
        )  # fmt: skip
        self.feed = RunFeed(self.engine, output=output, writer=self._writer, publish_results=publish_results)
        self._answers = Answers(self._channel, coordinator_id=coordinator_id)
        self._logs = LogDesk(coordinator_id, store=store, data=self.data, trust=trust, answers=self._answers)
        self._dispatch = Dispatcher(
            self.engine, self._channel, self.feed, self.data, reply_to=coordinator_id,
            agents_changed=self._agents_changed.set, answers=self._answers, retention=retention or Retention(),
        )  # fmt: skip
        self._restorer = (
            Restorer(self.engine, store, self._writer, self._dispatch, coordinator_id=coordinator_id)
            if store is not None and self._writer is not None
            else None
        )
        self._dedup = Deduplicator()
        self._rejections = Rejections(log)
        self.rejections = self._rejections.counts
        self.telemetry = AgentTelemetry()  # the latest telemetry sample of each agent

    # -- attributes kept for callers ---------------------------------------------

    @property
    def listeners(self) -> list[CoordinatorListener]:
        """Observers (e.g. dagon.core.MongoSink)."""
        return self.feed.listeners

    @property
    def metrics(self) -> Any:
        """A CoordinatorMetrics (dagon.core._metrics) once bound."""
        return self.feed.metrics

    @metrics.setter
    def metrics(self, metrics: Any) -> None:
        self.feed.metrics = metrics

    @property
    def grant_ttl(self) -> float:
        return self.data.grant_ttl

    @grant_ttl.setter
    def grant_ttl(self, seconds: float) -> None:
        self.data.grant_ttl = seconds

    @property
    def relay_url(self) -> str:
        """Where agents reach the relay ("" without one)."""
        return self.data.relay_url

    def add_listener(self, listener: CoordinatorListener) -> None:
        """Tell ``listener`` of every run and task change and telemetry sample from now on."""
        self.feed.listeners.append(listener)

    def grant(self, *, run: RunId, task: str, attempt: int, path: str, audience: str, op: str = "read") -> str:
        """A data-plane token for ``path`` of one attempt's directory (see ``dagon.protocol.Grant``)."""
        return self.data.grant(run=run, task=task, attempt=attempt, path=path, audience=audience, op=op)

    def queue_depths(self) -> dict[str, int]:
        """Items waiting in the internal queues (for metrics)."""
        return {"public_output": self.feed.output._queue.qsize(), "engine_commands": len(self._dispatch.pending)}

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        tune_gc()  # a long-lived loop holding every task: see dagon.protocol._gc
        async with contextlib.AsyncExitStack() as stack:
            if self._restorer is not None:
                await self._restorer.restore_unfinished()
                await self._restorer.republish_ended(self.feed.output, self._dispatch.retention)
            relay = self.data.relay
            if relay is not None:
                await relay.__aenter__()
                self._relay_open = True
                stack.push_async_callback(self._close_relay)
            await stack.enter_async_context(self._transport)
            await self._transport.subscribe(
                topics.all_agent_status(), topics.all_agent_telemetry(), topics.coordinator_inbox(self.id)
            )
            await self._publish_online()
            stack.push_async_callback(self._went_offline)
            await stack.enter_async_context(self._loops())
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(et, e, tb)

    @contextlib.asynccontextmanager
    async def _loops(self) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            loops = [
                tg.create_task(self._receive_loop(), name="coordinator-receive"),
                tg.create_task(self._dispatch.drive_loop(), name="coordinator-drive"),
                tg.create_task(self.feed.output.publish_loop(), name="coordinator-public"),
                tg.create_task(self._reannounce_loop(), name="coordinator-reannounce"),
            ]
            try:
                yield
            finally:
                await self._flush()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await self._channel.publisher.drain()
                        await self.feed.output.drain()
                self._channel.publisher.cancel()
                self.feed.output.close()
                for task in loops:
                    task.cancel()
                self._tg = None  # nothing new starts in a group that is closing

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> bool:
        """Run ``coro`` in the coordinator's task group (False, and closed, when it is not running)."""
        if self._tg is None:
            coro.close()
            return False
        self._tg.create_task(coro, name=name)
        return True

    def _wake_drive(self) -> None:
        self._dispatch.wake.set()

    async def _close_relay(self) -> None:
        if self._relay_open and self.data.relay is not None:
            self._relay_open = False
            await self.data.relay.__aexit__(None, None, None)

    async def _publish_online(self) -> None:
        await self._transport.publish(
            topics.coordinator_status(self.id),
            encode_public({"schema": SCHEMA_COORDINATOR, "id": self.id, "online": True, "since": time.time()}),
            retain=True,
            content_type=CONTENT_TYPE_JSON,
        )

    async def _went_offline(self) -> None:
        try:
            with contextlib.suppress(Exception):
                await self._transport.publish(
                    topics.coordinator_status(self.id),
                    encode_public({"schema": SCHEMA_COORDINATOR, "id": self.id, "online": False}),
                    retain=True,
                    content_type=CONTENT_TYPE_JSON,
                )
        finally:
            self.feed.close()

    async def detach(self) -> None:
        """Stop acting on runs before the process it lives in shuts its agents down (``ephemeral``).

        Runs still going are recorded as interrupted, and reports that arrive from now on
        are ignored: agents stopping with the process cancel their tasks, and reacting to
        that (requeueing, regenerating outputs of an agent that merely stopped) would only
        rewrite the store with a picture of the shutdown instead of the run.
        """
        if self._detached:
            return
        self._detached = True
        if self._restorer is not None:
            await self._restorer.interrupt_running()

    async def _flush(self) -> None:
        """Let queued public messages and store writes go out (bounded wait)."""
        if self._ephemeral:
            await self.detach()
        self.feed.output.forget_agents()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.feed.output.drain()
                if self._writer is not None:
                    await self._writer.drain()
            await self._close_relay()

    async def _reannounce_loop(self) -> None:
        while True:
            await self._transport.wait_reconnect()
            await self._publish_online()

    # -- public API --------------------------------------------------------------

    async def submit(self, workflow: Workflow, *, run_id: RunId | None = None, keep_scratch: bool = False) -> RunId:
        """Validate and start a run; raises ValidationError before anything runs.

        References to other workflows (``workflow://Other/task/path``) resolve to the
        latest run of ``Other`` on this coordinator. A task whose runtime no online
        agent offers is an error (checked once any agent is online).
        """
        graph = admit(workflow, self.engine)
        run = run_id or new_run_id(workflow.name)
        check_run_id(run)
        if self.store is not None:
            options = {"keep_scratch": keep_scratch}
            await asyncio.to_thread(
                self.store.create_run, run, workflow.name, workflow.to_dict(), time.time(), options, self.id
            )
        self._dispatch.feed(RunSubmitted(run, workflow, graph, keep_scratch=keep_scratch))
        return run

    def _remote_submit(self, msg: SubmitRun, envelope: Envelope) -> None:
        """A client's ``SubmitRun``: the same checks as :meth:`submit`; a refusal is answered and
        published as the run's status, an acceptance answered once the run is stored."""
        answer = self._answers.answer
        try:
            check_run_id(msg.run)
        except ValidationError as exc:  # not even a status: the id cannot name a topic safely
            log.warning("rejected a submitted run: %s", exc)
            answer(envelope, accepted=False, reason=str(exc), code="invalid")
            return
        if msg.run in self.engine.runs:
            answer(envelope, accepted=True, reason="already accepted")  # the client sent it again
            return
        try:
            workflow = Workflow.from_dict(msg.workflow)
            graph = admit(workflow, self.engine)
        except ValidationError as exc:
            self.feed.output.rejected(msg.run, str(exc))
            log.warning("rejected run %s: %s", msg.run, exc)
            answer(envelope, accepted=False, reason=str(exc), code="invalid")
            return
        if self._writer is not None:
            options = {"keep_scratch": msg.keep_scratch}
            self._writer.create_run(msg.run, workflow.name, workflow.to_dict(), time.time(), options, self.id)
        self._dispatch.handle(RunSubmitted(msg.run, workflow, graph, msg.keep_scratch), time.time())
        answer(envelope, accepted=True)
        log.info("accepted run %s of workflow %s (%d tasks)", msg.run, workflow.name, len(workflow))

    def _remote_cancel(self, event: RunCancelRequested, envelope: Envelope) -> None:
        view = self.engine.runs.get(event.run)
        if view is None or view.state is not RunState.RUNNING:
            code, why = ("unknown_run", f"coordinator {self.id!r} has no run {event.run} in progress") if view is None \
                else ("ended", f"run {event.run} already ended: {view.state.value}")  # fmt: skip
            self._answers.answer(envelope, accepted=False, reason=why, code=code)
        else:
            self._dispatch.handle(event, time.time())
            self._answers.answer(envelope, accepted=True, reason="cancelling")
            log.info("cancelling run %s (%s)", event.run, event.reason)

    async def resume(self, run: RunId) -> RunId:
        """Run again what did not succeed in a run of the store (``dagon resume``).

        A run still in progress here is left alone; a run that ended has its failed, cancelled and never-run
        tasks run again (new attempts), its succeeded tasks kept. Raises RunNotFound if the store has no such run.
        """
        view = self.engine.runs.get(run)
        if view is not None and view.state is RunState.RUNNING:
            return run
        if self._restorer is None:
            raise ValidationError("resuming needs a run store (this coordinator keeps none)")
        return await self._restorer.resume(run)

    async def _remote_resume(self, run: RunId, envelope: Envelope) -> None:
        try:
            await self.resume(run)
        except (RunNotFound, ValidationError) as exc:
            self.feed.output.rejected(run, f"cannot resume: {exc}")
            self._answers.answer(envelope, accepted=False, reason=f"cannot resume: {exc}", code="invalid")
            log.warning("refused to resume run %s: %s", run, exc)
        else:
            self._answers.answer(envelope, accepted=True)
        self._wake_drive()

    async def cancel(self, run: RunId, reason: str = "cancelled by user") -> None:
        self.engine.run(run)  # raises RunNotFound
        self._dispatch.feed(RunCancelRequested(run, reason))

    async def wait(self, run: RunId) -> RunResult:
        return await self.feed.wait(run)

    def events(self, run: RunId) -> AsyncIterator[RunEvent]:
        """Every state change of the run from now on, ending with the run's end."""
        return self.feed.events(run)

    def result(self, run: RunId) -> RunResult:
        return RunResult.from_view(self.engine.run(run))

    @property
    def agents_online(self) -> int:
        return sum(1 for a in self.engine.agents.values() if a.online)

    @property
    def agents_answering(self) -> int:
        """Agents that announced themselves and were asked to prove it, answer not in yet."""
        return self._gate.questioned(time.time())

    async def wait_for_agents(self, count: int = 1) -> None:
        """Wait until ``count`` agents are online (bound it with ``asyncio.timeout``)."""
        while self.agents_online < count:
            self._agents_changed.clear()
            await self._agents_changed.wait()

    def output_source(self, run: RunId, task: str, attempt: int, agent: str, path: str) -> StageInput:
        """Where a client can pull ``path`` of a finished task's output from: the producer's
        data server, or the relay (after asking an unreachable producer to upload there)."""
        item = self.data.output_source(run, task, attempt, agent, path)
        if item.relay:
            self._wake_drive()  # the upload request goes out with the next drive pass
        return item

    async def collect_garbage(self, runs: list[RunId] | None = None) -> list[RunId]:
        """Ask every known agent to delete the scratch of finished ``runs`` (``dagon gc``; default: every
        finished run of the run store and in memory; never a running one). Returns the run ids sent."""
        running = {r for r, v in self.engine.runs.items() if v.state is RunState.RUNNING}
        if runs is None:
            found = {r for r, v in self.engine.runs.items() if v.state is not RunState.RUNNING}
            if self.store is not None:
                records = await asyncio.to_thread(self.store.list_runs, 1_000_000)
                found.update(RunId(r.id) for r in records if r.state != RunState.RUNNING.value)
            runs = sorted(found)
        chosen = tuple(r for r in runs if r not in running)
        if chosen:
            for agent in list(self.engine.agents):  # addressed (and signed) for each agent
                await self._channel.to_agent(agent, DeleteData(runs=chosen))
        return list(chosen)

    # -- the inbox ---------------------------------------------------------------

    async def _receive_loop(self) -> None:
        handled = 0
        retained = (topics.all_agent_status(), topics.all_agent_telemetry())
        async for received in self._channel.incoming(self._undecodable, retained=retained):
            try:
                self._on_message(received.topic, received.envelope)
            except ProtocolError as exc:
                self._rejections(received.topic, exc.reason, str(exc))
            except ValidationError as exc:
                self._rejections(received.topic, "invalid", str(exc))
            except Exception as exc:  # a bug handling one message must not end the coordinator
                log.exception("error handling a message on %s", received.topic)
                self._rejections(received.topic, "internal", f"{type(exc).__name__}: {exc}")
            handled += 1
            if handled % 256 == 0:
                await asyncio.sleep(0)  # let drive/public loops run under sustained load

    def _undecodable(self, topic: str, exc: ProtocolError, payload: bytes) -> None:
        if not self._detached:
            self._rejections(topic, exc.reason, str(exc))
            if self._answers.refused(topic, payload, exc):  # its client hears why, not only this log
                self._wake_drive()

    def _fresh(self, envelope: Envelope, now: float) -> bool:
        """Whether an agent's report is fresh (dagon.core._freshness); ASK: challenge it to announce itself."""
        verdict = report_verdict(self._gate, envelope.message, envelope.ts, now)
        if verdict is Verdict.ASK:
            agent = envelope.message.agent  # type: ignore[attr-defined]  # route() checked it is an agent's
            ask = self._channel.to_agent_control(agent, Control("announce", {"challenge": self._gate.challenge(agent)}))
            self._spawn(ask, f"ask-{agent}")
        return verdict is Verdict.ACCEPT

    def _on_message(self, topic: str, envelope: Envelope) -> None:
        if self._detached:
            return
        if agent_topic(topic) is None and not self._dedup.first(envelope.id):
            return  # duplicate delivery (QoS 1 is at-least-once)
        events = route(topic, envelope)
        now = time.time()
        if agent_topic(topic) is not None and not self._fresh(envelope, now):  # a sample is not about liveness:
            events = [event for event in events if isinstance(event, TelemetryReceived)]  # taken as it is
        dispatch = self._dispatch
        wake = False
        for event in events:
            match event:
                case KeyAnnounced():
                    if self._trust is not None:
                        self._trust.pin(event.agent, event.key)
                case ResultsHeld():
                    dispatch.acknowledge_stale(event.agent, event.held)
                case ResultsReceived():
                    dispatch.acknowledge(event.agent, event.refs)
                case TelemetryReceived():
                    if wake:  # the heartbeat it rode on counts even if the sample is refused below
                        dispatch.wake.set()
                    if self.telemetry.take(event.sample):  # raises ProtocolError on impossible figures
                        notify(self.feed.listeners, "agent_telemetry", event.sample)
                    continue
                case Progress():
                    self.feed.progress(event.report, now)
                    continue
                case TimeAsked():  # the querier measures our clock against its own (NTP-style)
                    answer = TimeAnswer(nonce=event.nonce, received=now, sent=time.time())
                    self._spawn(self._channel.to_agent_control(event.agent, answer), f"time-{event.agent}")
                    continue
                case SubmitRequested():
                    self._remote_submit(event.request, envelope)
                case ResumeRequested():
                    self._spawn(self._remote_resume(event.run, envelope), f"coordinator-resume-{event.run}")
                case CancelRequested():
                    self._remote_cancel(event.cancel, envelope)
                case LogsRequested():
                    self._spawn(self._logs.answer(event.request, envelope, self._wake_drive), f"logs-{envelope.id}")
                case _:
                    if not dispatch.handle(event, now):
                        continue  # e.g. an idle agent's heartbeat: nothing for a drive pass
            wake = True
        if wake:
            dispatch.wake.set()
