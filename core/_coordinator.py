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
import dataclasses
import logging
import os
import shutil
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from dagon.core._checks import check_runtimes
from dagon.core._engine import Engine
from dagon.core._errors import RunNotFound, ValidationError
from dagon.core._events import (
    AgentAnnounced,
    AgentChanged,
    AgentOffline,
    AgentSeen,
    CancelAttempt,
    Command,
    DeleteScratch,
    Dispatch,
    Event,
    RunCancelRequested,
    RunSubmitted,
    RunTransition,
    TaskFinished,
    TaskRejected,
    TaskStarted,
    TaskTransition,
    TaskWaiting,
    Tick,
)
from dagon.core._fit import check_placeable
from dagon.core._listeners import CoordinatorListener, notify
from dagon.core._model import Workflow
from dagon.core._output import PublicOutput
from dagon.core._placement import AgentView
from dagon.core._results import RunEvent, RunResult, task_result_doc
from dagon.core._states import TERMINAL, RunState, TaskState
from dagon.core._store import Store
from dagon.core._telemetry import AgentTelemetry
from dagon.core._trust import CoordinatorTrust
from dagon.core._writer import StoreWriter
from dagon.protocol import (
    CONTENT_TYPE_JSON,
    DEFAULT_GRANT_TTL,
    SCHEMA_COORDINATOR,
    Ack,
    AgentId,
    Announce,
    AssignTasks,
    CancelRun,
    CancelTasks,
    Codec,
    DeleteData,
    Grant,
    Heartbeat,
    Offline,
    ProtocolError,
    Rejection,
    Rejections,
    ResultsStored,
    ResumeRun,
    RunId,
    Signer,
    StageInput,
    SubmitRun,
    TaskAssignment,
    TaskName,
    TaskProgress,
    TaskRef,
    TasksFinished,
    TasksStarted,
    Telemetry,
    UploadOutputs,
    encode_public,
    mint_grant,
    read_grant,
    topics,
)
from dagon.protocol.transport import DataServer, Publisher, Transport, Will

__all__ = ["Coordinator", "new_run_id"]

log = logging.getLogger(__name__)

_MAX_BATCH: Final = 2000  # assignments per message


RELAY_KEEP: Final = 600.0  # seconds relayed outputs outlive their run
# Seconds the attempts of an agent whose Last Will arrived wait for it before running elsewhere:
# a restarting broker publishes every client's Will at once, and its agents are back within
# seconds, still running their tasks. A clean shutdown or a heartbeat timeout does not wait.
DEFAULT_REQUEUE_GRACE: Final = 10.0
INTERRUPTED: Final = "interrupted"  # stored state of a run whose in-process coordinator stopped


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _safe(name: str) -> str:
    """A run or task name as one directory level of the relay (names are validated; this is belt and braces)."""
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ProtocolError(f"{name!r} cannot name a relay directory", reason="value")
    return name


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
        relay_dir: where the relay keeps uploads of unreachable agents (``None``: no
            relay; inputs from agents announced as unreachable then cannot be staged).
        relay_host, relay_port: where the relay listens (loopback by default).
        relay_url: the URL agents use for it (default ``http://relay_host:port``).
        ephemeral: the coordinator lives inside a client process (``dagon run``): when it
            stops, runs it leaves unfinished are recorded as ``interrupted`` (``dagon resume``
            continues them) instead of ``running`` (which a restarted service resumes).
        relay_tls: serve the relay (and checkpoint storage) over HTTPS with this server
            context (agents verify it with their ``data_tls_ca``).
        checkpoint_dir: durable storage for the outputs of tasks marked ``checkpoint``
            (default: ``checkpoints`` next to ``relay_dir``). When such a task succeeds its
            agent uploads its outputs there (through the relay's server); consumers read them
            from there once that agent is gone, so they are never regenerated. Never expired:
            remove a finished run's directory when it is no longer needed.
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
    ) -> None:
        if (signer is None or trust is None) and not insecure:
            raise ValueError(
                "a coordinator signs what it sends and verifies what it receives: pass signer= and trust="
                " (see dagon._keys), or insecure=True for development"
            )
        self.id = coordinator_id
        self.engine = engine or Engine(heartbeat_ttl=heartbeat_ttl, requeue_grace=requeue_grace)
        self.store = store
        self.publish_results = publish_results
        codec_args: dict[str, Any] = {"sender": f"coordinator/{coordinator_id}", "signer": signer, "trust": trust}
        if max_message_size is not None:
            codec_args["max_size"] = max_message_size
        self.codec = Codec(**codec_args)
        self._trust = trust
        # Grants for the data plane; an --insecure coordinator signs them with a throwaway key
        # (its agents do not verify them, but scope and expiry still apply).
        self._grant_signer = signer or Signer.generate()
        self.grant_ttl = DEFAULT_GRANT_TTL
        self._relay: DataServer | None = None
        self._relay_url = relay_url
        if checkpoint_dir is None and relay_dir is not None:
            checkpoint_dir = relay_dir.parent / "checkpoints"
        self._checkpoint_dir = checkpoint_dir
        self.engine.durable_checkpoints = relay_dir is not None
        if relay_dir is not None:
            own = {self._grant_signer.key_id: self._grant_signer.public_key}
            self._relay = DataServer(
                authorize=lambda token: read_grant(token, own),
                locate=self._locate,
                host=relay_host,
                port=relay_port,
                uploads=True,
                tls=relay_tls,
            )
        self._uploads_asked: set[tuple[str, str, int, str]] = set()
        # (run, task, attempt) of a checkpoint -> the agent storing its copy ("" = checkpoint_dir)
        self._checkpoint_at: dict[tuple[str, str, int], str] = {}
        self._relay_dir = relay_dir
        self._ephemeral = ephemeral
        self._detached = False
        self._relay_finished: dict[RunId, float] = {}
        self._uploads: list[tuple[AgentId, UploadOutputs]] = []
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
        # agent -> results received whose acknowledgement (ResultsStored) goes out once they are persisted
        self._stored: defaultdict[AgentId, list[TaskRef]] = defaultdict(list)
        self._rejections = Rejections(log)
        self.rejections = self._rejections.counts
        self.metrics: Any = None  # a CoordinatorMetrics (dagon.core._metrics) once bound
        self.listeners: list[CoordinatorListener] = []  # observers (e.g. dagon.core.MongoSink)
        self.telemetry = AgentTelemetry()  # the latest telemetry sample of each agent

    def add_listener(self, listener: CoordinatorListener) -> None:
        """Tell ``listener`` of every run and task change and telemetry sample from now on."""
        self.listeners.append(listener)

    # -- lifecycle -----------------------------------------------------------

    def _locate(self, grant: Grant) -> Path:
        """Where the relay's server keeps an attempt's files: checkpoint storage or the relay."""
        leaf = Path(_safe(grant.run)) / f"{_safe(grant.task)}-{grant.attempt}"
        assert self._relay_dir is not None
        if self._checkpoint_dir is not None and self._is_checkpoint(grant.run, grant.task, leaf):
            return self._checkpoint_dir / leaf
        return self._relay_dir / leaf

    def _is_checkpoint(self, run: str, task: str, leaf: Path) -> bool:
        marked = self._marked_checkpoint(RunId(run), task)
        if marked is not None:
            return marked
        assert self._checkpoint_dir is not None
        return (self._checkpoint_dir / leaf).is_dir()  # a run no longer in memory

    def _marked_checkpoint(self, run: RunId, task: str) -> bool | None:
        """Whether a task of a run in memory is marked ``checkpoint`` (None: no such task)."""
        view = self.engine.runs.get(run)
        task_view = view.tasks.get(task) if view is not None else None
        return task_view.spec.checkpoint if task_view is not None else None

    @property
    def _own_checkpoints(self) -> bool:
        """Whether this coordinator keeps checkpoints itself (relay server and directory)."""
        return self._relay is not None and self._checkpoint_dir is not None

    @property
    def relay_url(self) -> str:
        """Where agents reach the relay ("" without one)."""
        if self._relay is None:
            return ""
        return self._relay_url or self._relay.url

    async def __aenter__(self) -> Self:
        if self.store is not None:
            await self._restore_unfinished()
        if self._relay is not None:
            await self._relay.__aenter__()
        try:
            await self._transport.__aenter__()
        except BaseException:
            if self._relay is not None:
                await self._relay.__aexit__(None, None, None)
            raise
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
                self._tg.create_task(self._reannounce_loop(), name="coordinator-reannounce"),
            ]
        except BaseException:
            await self._transport.__aexit__(None, None, None)
            if self._relay is not None:
                await self._relay.__aexit__(None, None, None)
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
        if self._writer is None:
            return
        now = time.time()
        for run, view in self.engine.runs.items():
            if view.state is RunState.RUNNING:
                cause = f"{self.id} stopped before the run ended; 'dagon resume {run}' continues it"
                self._writer.run_state(run, INTERRUPTED, cause, now)
                log.warning("run %s interrupted: %s", run, cause)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._writer.commit()

    async def _flush(self) -> None:
        """Let queued public messages and store writes go out (bounded wait)."""
        if self._ephemeral:
            await self.detach()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._output.drain()
                if self._writer is not None:
                    await self._writer.drain()
            if self._relay is not None:
                await self._relay.__aexit__(None, None, None)

    # -- public API ----------------------------------------------------------

    async def submit(self, workflow: Workflow, *, run_id: RunId | None = None, keep_scratch: bool = False) -> RunId:
        """Validate and start a run; raises ValidationError before anything runs.

        References to other workflows (``workflow://Other/task/path``) resolve to the
        latest run of ``Other`` on this coordinator. A task whose runtime no online
        agent offers is an error (checked once any agent is online).
        """
        graph = workflow.graph(external=True)
        if self.agents_online:
            check_runtimes(workflow, self.engine.agents.values())
        check_placeable(workflow, self.engine.agents.values())  # no-op while no agent is known
        self.engine.check_references(workflow, graph)
        run = run_id or new_run_id(workflow.name)
        if self.store is not None:
            options = {"keep_scratch": keep_scratch}
            await asyncio.to_thread(
                self.store.create_run, run, workflow.name, workflow.to_dict(), time.time(), options, self.id
            )
        self._feed(RunSubmitted(run, workflow, graph, keep_scratch=keep_scratch))
        return run

    async def _restore_unfinished(self) -> None:
        """Resume this coordinator's runs the store records as running (it restarted; see dagon.core._recovery).

        Only runs created by a coordinator of the same id: in-process coordinators of
        clients (``dagon run``) have ids of their own and share a home's store without
        taking over each other's runs; ``dagon resume RUN`` takes one over explicitly.

        Runs are restored before the broker connection opens, so the first reports
        and announcements already find them.
        """
        assert self.store is not None
        ids = await asyncio.to_thread(self.store.unfinished_runs, self.id)
        for run in ids:
            await self._restore(RunId(run), reopen=False)

    async def _restore(self, run: RunId, *, reopen: bool) -> bool:
        assert self.store is not None
        stored = await asyncio.to_thread(self.store.load, run)
        if stored is None:
            raise RunNotFound(run)
        try:
            workflow = Workflow.from_dict(stored.spec)
            graph = workflow.graph(external=True)
            commands, summary = self.engine.restore(
                run, workflow, graph, stored.tasks, now=time.time(),
                keep_scratch=bool(stored.options.get("keep_scratch")), reopen=reopen,
            )  # fmt: skip
        except ValidationError as exc:
            log.error("run %s cannot be resumed: %s", run, exc)
            if self._writer is not None:
                self._writer.run_state(run, RunState.FAILED.value, f"cannot be resumed: {exc}", time.time())
                await self._writer.commit()
            return False
        log.warning("%s run %s of workflow %s: %s", "reopened" if reopen else "resumed", run, workflow.name, summary)
        self._pending.extend(commands)
        self._wake.set()
        return True

    async def resume(self, run: RunId) -> RunId:
        """Run again what did not succeed in a run of the store (``dagon resume``).

        A run still in progress here is left alone; a run that ended has its failed,
        cancelled and never-run tasks run again (new attempts), while its succeeded
        tasks are kept as they are. Raises RunNotFound if the store has no such run.
        """
        view = self.engine.runs.get(run)
        if view is not None and view.state is RunState.RUNNING:
            return run
        if self.store is None:
            raise ValidationError("resuming needs a run store (this coordinator keeps none)")
        record = await asyncio.to_thread(self.store.get_run, run)
        if record is None:
            raise RunNotFound(run)
        self.engine.forget(run)
        await asyncio.to_thread(self.store.reopen, run, self.id)
        if not await self._restore(run, reopen=True):
            raise ValidationError(f"run {run} cannot be resumed (see the coordinator's log)")
        # Announced like a start: public status and event, listeners (e.g. the MongoDB sink).
        self._pending.append(RunTransition(run, RunState.RUNNING, "resumed", time.time()))
        self._wake.set()
        return run

    async def _remote_resume(self, run: RunId) -> None:
        try:
            await self.resume(run)
        except (RunNotFound, ValidationError) as exc:
            self._output.rejected(run, f"cannot resume: {exc}")
            self._wake.set()
            log.warning("refused to resume run %s: %s", run, exc)

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
        if self._detached:
            return
        parts = topic.split("/")
        if len(parts) == 5 and parts[2] == "agents":
            agent = AgentId(topics.unescape_level(parts[3]))
            if not payload:
                return  # a cleared retained status
            env = self.codec.decode(payload)
            msg = env.message
            if parts[4] == "status" and isinstance(msg, Announce) and msg.agent == agent:
                if self._trust is not None:
                    self._trust.pin(agent, msg.key)
                self._feed(AgentAnnounced(agent, msg.capabilities))
            elif parts[4] == "status" and isinstance(msg, Offline) and msg.agent == agent:
                self._feed(AgentOffline(agent, msg.reason or "offline"))
            elif parts[4] == "telemetry" and isinstance(msg, Heartbeat) and msg.agent == agent:
                refs = frozenset(msg.held) if msg.complete else None
                if msg.held:
                    self._ack_stale(agent, msg.held)
                self._pending.extend(self.engine.handle(AgentSeen(agent, held=msg.running, refs=refs), time.time()))
                self._wake.set()
            elif parts[4] == "telemetry" and isinstance(msg, Telemetry) and msg.agent == agent:
                if self.telemetry.take(msg):  # raises ProtocolError on impossible figures
                    notify(self.listeners, "agent_telemetry", msg)
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
            stored = self._stored[msg.agent]
            for result in msg.results:
                pending.extend(engine.handle(TaskFinished(msg.agent, result), now))
                stored.append(TaskRef(result.run, result.task, result.attempt))
        elif isinstance(msg, TasksStarted):
            for started in msg.tasks:
                ref = TaskRef(started.run, started.task, started.attempt)
                pending.extend(engine.handle(TaskStarted(msg.agent, ref, started.started_at, started.workdir), now))
        elif isinstance(msg, Ack):
            for rejection in msg.rejected:
                pending.extend(engine.handle(TaskRejected(msg.agent, rejection), now))
        elif isinstance(msg, TaskProgress):
            self._on_progress(msg, now)
            return
        elif isinstance(msg, SubmitRun):
            self._remote_submit(msg)
        elif isinstance(msg, ResumeRun):
            if self._tg is not None:
                self._tg.create_task(self._remote_resume(msg.run), name=f"coordinator-resume-{msg.run}")
        elif isinstance(msg, CancelRun):
            if msg.run in engine.runs:
                pending.extend(engine.handle(RunCancelRequested(msg.run, msg.reason or "cancelled by client"), now))
        else:
            raise ProtocolError(f"{msg.OP} is not accepted on the coordinator inbox", reason="unexpected")
        self._wake.set()

    def _ack_stale(self, agent: AgentId, held: tuple[TaskRef, ...]) -> None:
        """Results an agent still holds for attempts of ours that are over (superseded, or the
        task ended): acknowledge them so its spool lets go (they may be addressed to a
        coordinator that is gone, e.g. the one of an interrupted ``dagon run``)."""
        runs = self.engine.runs
        for ref in held:
            view = runs[ref.run].tasks.get(ref.task) if ref.run in runs else None
            if view is not None and (view.attempt != ref.attempt or view.agent != agent):
                self._stored[agent].append(ref)
        if self._stored.get(agent):
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
            graph = workflow.graph(external=True)
            if self.agents_online:
                check_runtimes(workflow, self.engine.agents.values())
            check_placeable(workflow, self.engine.agents.values())
            self.engine.check_references(workflow, graph)
        except ValidationError as exc:
            self._output.rejected(msg.run, str(exc))
            log.warning("rejected run %s: %s", msg.run, exc)
            return
        if self._writer is not None:
            options = {"keep_scratch": msg.keep_scratch}
            self._writer.create_run(msg.run, workflow.name, workflow.to_dict(), time.time(), options, self.id)
        self._pending.extend(self.engine.handle(RunSubmitted(msg.run, workflow, graph, msg.keep_scratch), time.time()))
        log.info("accepted run %s of workflow %s (%d tasks)", msg.run, workflow.name, len(workflow))

    def grant(self, *, run: RunId, task: str, attempt: int, path: str, audience: str, op: str = "read") -> str:
        """A data-plane token for ``path`` of one attempt's directory (see ``dagon.protocol.Grant``)."""
        expires = time.time() + self.grant_ttl
        return mint_grant(self._grant_signer, Grant(run, task, attempt, path, audience, op, expires))

    def _with_grants(self, agent: AgentId, assignment: TaskAssignment) -> TaskAssignment:
        """Point inputs produced on other hosts at their producer's data server, with a grant each."""
        if not assignment.inputs:
            return assignment
        agents = self.engine.agents
        consumer = agents.get(agent)
        host = consumer.capabilities.host_id if consumer is not None else ""
        if all(i.source_host == host for i in assignment.inputs):
            return assignment
        inputs = []
        for item in assignment.inputs:
            if item.source_host != host:
                producer = agents.get(item.source_agent)
                run = RunId(item.source_run or assignment.run)
                token = self.grant(run=run, task=item.task, attempt=item.source_attempt, path=item.path, audience=agent)
                item = self._source(item, producer, run, token)
            inputs.append(item)
        return dataclasses.replace(assignment, inputs=tuple(inputs))

    def _source(self, item: StageInput, producer: AgentView | None, run: RunId, token: str) -> StageInput:
        """The cheapest way to another host's output: its data server, else SFTP, else the relay."""
        if (producer is None or not producer.online) and self._checkpointed(run, item.task):
            stored = self._checkpoint_source(run, item.task, item.source_attempt)
            if stored:
                return dataclasses.replace(item, url=stored, token=token, relay=True)
        if producer is None:
            return item
        caps = producer.capabilities
        if not caps.reachable:
            return self._through_relay(item, run, token)
        if caps.data_url:
            return dataclasses.replace(item, url=caps.data_url, token=token)
        if caps.ssh_url:
            return dataclasses.replace(item, url=caps.ssh_url)  # the consumer's own SSH key authenticates it
        return item

    def output_source(self, run: RunId, task: str, attempt: int, agent: str, path: str) -> StageInput:
        """Where a client can pull ``path`` of a finished task's output from: the producer's
        data server, or the relay (after asking an unreachable producer to upload there)."""
        producer = self.engine.agents.get(AgentId(agent))
        if producer is None:
            raise ValidationError(f"agent {agent!r}, which ran {task!r}, is not known to this coordinator")
        caps = producer.capabilities
        item = StageInput(
            ref=f"workflow:///{task}/{path}", workflow="", task=TaskName(task), path=path,
            source_agent=AgentId(agent), source_host=caps.host_id, source_dir="", source_run=run,
            source_attempt=attempt,
        )  # fmt: skip
        token = self.grant(run=run, task=task, attempt=attempt, path=path, audience="client")
        item = self._source(item, producer, run, token)
        if item.relay:
            self._wake.set()  # the upload request goes out with the next drive pass
        return item

    def _checkpointed(self, run: RunId, task: str) -> bool:
        """Whether ``task``'s outputs go to checkpoint storage (which then serves them)."""
        if not self._own_checkpoints and self._checkpoint_store() is None:
            return False
        return bool(self._marked_checkpoint(run, task))

    def _checkpoint_store(self, exclude: str = "") -> AgentView | None:
        """An online agent announcing itself as a checkpoint store (first by id)."""
        for agent in sorted(self.engine.agents.values(), key=lambda a: a.id):
            caps = agent.capabilities
            if agent.online and caps.checkpoint_store and caps.reachable and caps.data_url and agent.id != exclude:
                return agent
        return None

    def _checkpoint_source(self, run: RunId, task: str, attempt: int) -> str:
        """The URL a checkpoint's copy is served at ("" if there is none)."""
        holder = self._checkpoint_at.get((run, task, attempt))
        if holder:  # an agent: only while it is online
            agent = self.engine.agents.get(AgentId(holder))
            return agent.capabilities.data_url if agent is not None and agent.online else ""
        if holder == "" or self._own_checkpoints:
            return self.relay_url  # the coordinator's own checkpoint storage
        return ""

    def _save_checkpoint(self, run: RunId, task: str) -> None:
        """A checkpoint task succeeded: have its agent upload every output to checkpoint storage —
        an agent announcing itself as a checkpoint store if one is online, else the coordinator's
        checkpoint directory."""
        view = self.engine.runs[run].tasks[task]
        agent = view.agent
        key = (run, task, view.attempt, "*")
        if agent is None or key in self._uploads_asked:
            return
        store = self._checkpoint_store(exclude=agent)
        if store is not None:
            holder, url = str(store.id), store.capabilities.data_url
        elif self._own_checkpoints:
            holder, url = "", self.relay_url
        else:
            return
        self._uploads_asked.add(key)
        self._checkpoint_at[(run, task, view.attempt)] = holder
        write = self.grant(run=run, task=task, attempt=view.attempt, path="*", audience=agent, op="write")
        upload = UploadOutputs(run=run, task=TaskName(task), attempt=view.attempt, path="*", url=url, token=write)
        self._uploads.append((agent, upload))
        log.info("checkpoint %s/%s attempt %d goes to %s", run, task, view.attempt, holder or "this coordinator")

    def _through_relay(self, item: StageInput, run: RunId, token: str) -> StageInput:
        """The producer cannot be reached: ask it (once) to upload to the relay; the consumer pulls there."""
        if self._relay is None:
            return item  # no URL: the consumer fails saying the producer serves no data
        key = (run, item.task, item.source_attempt, item.path)
        if key not in self._uploads_asked:
            self._uploads_asked.add(key)
            write = self.grant(
                run=run, task=item.task, attempt=item.source_attempt, path=item.path, audience=item.source_agent,
                op="write",
            )  # fmt: skip
            upload = UploadOutputs(
                run=run, task=TaskName(item.task), attempt=item.source_attempt, path=item.path, url=self.relay_url,
                token=write,
            )  # fmt: skip
            self._uploads.append((item.source_agent, upload))
        return dataclasses.replace(item, url=self.relay_url, token=token, relay=True)

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
            if commands or self._uploads or self._stored:
                await self._execute(commands, now)

    async def _execute(self, commands: list[Command], now: float) -> None:
        assign: dict[AgentId, list[TaskAssignment]] = defaultdict(list)
        cancel: dict[AgentId, list[TaskRef]] = defaultdict(list)
        delete: dict[AgentId, list[TaskRef]] = defaultdict(list)
        for cmd in commands:
            if isinstance(cmd, TaskTransition):
                self._on_transition(cmd)
            elif isinstance(cmd, Dispatch):
                assign[cmd.agent].append(self._with_grants(cmd.agent, cmd.assignment))
            elif isinstance(cmd, CancelAttempt):
                cancel[cmd.agent].append(cmd.ref)
            elif isinstance(cmd, RunTransition):
                self._on_run_transition(cmd)
            elif isinstance(cmd, AgentChanged):
                log.info("agent %s %s (%s)", cmd.agent, "online" if cmd.online else "offline", cmd.reason)
                self.engine.durable_checkpoints = self._own_checkpoints or self._checkpoint_store() is not None
                self._agents_changed.set()
            elif isinstance(cmd, DeleteScratch):
                delete[cmd.agent].append(cmd.ref)
            elif isinstance(cmd, TaskWaiting):
                self._on_waiting(cmd)
        stored, self._stored = self._stored, defaultdict(list)
        if self._writer is not None:
            # Write-ahead: nothing below leaves before the decisions behind it are in the store.
            await self._writer.commit()
        self._output.flush(self.engine.runs, now)
        for agent, batch in assign.items():
            waiting = stored.pop(agent, [])  # acknowledgements ride along (see AssignTasks)
            acks = tuple(waiting[:_MAX_BATCH])
            if waiting[_MAX_BATCH:]:
                stored[agent] = waiting[_MAX_BATCH:]
            for i in range(0, len(batch), _MAX_BATCH):
                for payload in self._encode_assignments(agent, batch[i : i + _MAX_BATCH], acks):
                    await self._publisher.send(topics.agent_tasks(agent), payload)
                acks = ()
        for agent, refs in cancel.items():
            payload = self.codec.encode(CancelTasks(tasks=tuple(refs), reason="run cancelled"))
            await self._publisher.send(topics.agent_tasks(agent), payload)
        for agent, refs in delete.items():
            for i in range(0, len(refs), _MAX_BATCH):
                payload = self.codec.encode(DeleteData(tasks=tuple(refs[i : i + _MAX_BATCH])))
                await self._publisher.send(topics.agent_tasks(agent), payload)
        uploads, self._uploads = self._uploads, []
        for agent, upload in uploads:
            await self._publisher.send(topics.agent_tasks(agent), self.codec.encode(upload))
        for agent, refs in stored.items():
            for i in range(0, len(refs), _MAX_BATCH):
                payload = self.codec.encode(ResultsStored(tasks=tuple(refs[i : i + _MAX_BATCH])))
                await self._publisher.send(topics.agent_tasks(agent), payload)

    def _encode_assignments(
        self, agent: AgentId, batch: list[TaskAssignment], acks: tuple[TaskRef, ...] = ()
    ) -> list[bytes]:
        """Encoded assignment messages; a task that cannot be encoded (e.g. over the
        message size limit) fails with the reason instead of stalling the others."""
        try:
            return [self.codec.encode(AssignTasks(reply_to=self.id, tasks=tuple(batch), stored=acks))]
        except ProtocolError:
            pass
        payloads = []
        if acks:
            payloads.append(self.codec.encode(ResultsStored(tasks=acks)))
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
        if self.listeners and not derived:
            notify(self.listeners, "task_changed", t, self.engine.runs[run].tasks[t.task])
        if t.new in TERMINAL:
            view = self.engine.runs[run].tasks[t.task]
            if t.new is TaskState.SUCCEEDED and view.spec.checkpoint and self._checkpointed(run, t.task):
                self._save_checkpoint(run, t.task)
            if self.metrics is not None:
                self.metrics.task_ended(view)
            if self._writer is None and not self.publish_results:
                return
            payload = encode_public(task_result_doc(view))  # encoded once: stored and published
            if self._writer is not None:
                self._writer.task_row((run, t.task, t.new.value, t.attempt, t.agent, t.cause, payload.decode()))
            self._output.task_result(run, t.task, payload)

    def _on_progress(self, msg: TaskProgress, now: float) -> None:
        """An informational event (no state change) for the current attempt only."""
        run = self.engine.runs.get(msg.run)
        view = run.tasks.get(msg.task) if run is not None else None
        if view is None or view.attempt != msg.attempt or view.agent != msg.agent or view.state in TERMINAL:
            return
        state = view.state.value
        event = RunEvent(msg.run, msg.task, state, state, msg.attempt, msg.agent, msg.note[:500], now)
        for queue in self._watchers.get(msg.run, ()):
            queue.put_nowait(event)
        self._output.event(event)

    def _on_waiting(self, w: TaskWaiting) -> None:
        """Why a ready task is not placed: an informational event (state stays ready)."""
        state = TaskState.READY.value
        event = RunEvent(w.run, w.task, state, state, w.attempt, None, w.reason, w.at)
        for queue in self._watchers.get(w.run, ()):
            queue.put_nowait(event)
        self._output.event(event)

    async def collect_garbage(self, runs: list[RunId] | None = None) -> list[RunId]:
        """Ask every known agent to delete the scratch of finished runs (``dagon gc``).

        Args:
            runs: the runs to remove (default: every finished run of the run store,
                plus finished runs still in memory). Running runs are never included.

        Returns:
            The run ids sent.
        """
        running = {r for r, v in self.engine.runs.items() if v.state is RunState.RUNNING}
        if runs is None:
            found = {r for r, v in self.engine.runs.items() if v.state is not RunState.RUNNING}
            if self.store is not None:
                records = await asyncio.to_thread(self.store.list_runs, 1_000_000)
                found.update(RunId(r.id) for r in records if r.state != RunState.RUNNING.value)
            runs = sorted(found)
        chosen = tuple(r for r in runs if r not in running)
        if chosen:
            payload = self.codec.encode(DeleteData(runs=chosen))
            for agent in list(self.engine.agents):
                await self._publisher.send(topics.agent_tasks(agent), payload)
        return list(chosen)

    def _on_run_transition(self, t: RunTransition) -> None:
        view = self.engine.runs[t.run]
        self._output.touch(t.run)
        event = RunEvent(t.run, None, t.new.value, None, 0, None, t.cause, t.at)
        self._output.event(event)
        if self.listeners:
            notify(self.listeners, "run_changed", t, view)
        if t.new is RunState.RUNNING:
            log.info("run %s started (%d tasks)", t.run, len(view.tasks))
            return
        log.info("run %s %s: %s", t.run, t.new.value, t.cause)
        if self._writer is not None:
            self._writer.run_state(t.run, t.new.value, t.cause, t.at)
        if self._relay is not None:
            self._expire_relay(t.run, t.at)
        for queue in self._watchers.pop(t.run, ()):
            queue.put_nowait(event)
            queue.put_nowait(None)
        fut = self._waiters.pop(t.run, None)
        if fut is not None and not fut.done():
            fut.set_result(RunResult.from_view(view))

    def _expire_relay(self, finished: RunId, now: float) -> None:
        """Relayed outputs stay for a while after their run ends (fetches, later runs referencing
        them), then are deleted; asking again re-uploads them."""
        self._relay_finished[finished] = now
        expired = [run for run, at in self._relay_finished.items() if now - at > RELAY_KEEP]
        if not expired or self._relay_dir is None or self._tg is None:
            return
        for run in expired:
            del self._relay_finished[run]
        self._uploads_asked = {key for key in self._uploads_asked if key[0] not in expired}
        paths = [self._relay_dir / _safe(run) for run in expired]
        self._tg.create_task(asyncio.to_thread(_remove_all, paths), name="coordinator-relay-expiry")

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
