"""The async Python API: ``async with dagon.connect(...) as client``.

Three ways to run, chosen by the arguments:

* no broker (argument or ``DAGON_BROKER``) — the **embedded default**: an amqtt
  broker on a free loopback port, a coordinator and one agent in this process,
  runs recorded in ``$DAGON_HOME/runs.sqlite``;
* ``broker=URL`` — a coordinator in this process, tasks run on the agents
  connected to that broker;
* ``broker=URL, coordinator=ID`` (or ``"auto"``) — hand runs to a standalone
  ``dagon coordinator`` and follow them on the public topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

from dagon._keys import client_signer, coordinator_signer, coordinator_trust, warn_insecure
from dagon._remote import RemoteRuns, find_coordinator
from dagon._settings import broker_from_env, dagon_home, insecure_from_env
from dagon.agent import host_id
from dagon.core import Coordinator, CoordinatorTrust, RunEvent, RunResult, Workflow
from dagon.core._coordinator import DEFAULT_REQUEUE_GRACE, new_run_id
from dagon.core._store import RunStore
from dagon.protocol import (
    CancelRun,
    Codec,
    DagonError,
    ResumeRun,
    RunId,
    Signer,
    SubmitRun,
    TransportError,
    topics,
)
from dagon.protocol.transport import MqttAuth, MqttTransport, Transport, Will, covered_files, pull

__all__ = ["Client", "RunHandle", "connect"]


def _copy_covered(root: Path, scope: str, dest: Path) -> None:
    """Copy the regular files of ``root`` that ``scope`` covers (as staging would) into ``dest``."""
    found = False
    for rel in covered_files(root, scope):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
        found = True
    if not found:
        raise DagonError(f"nothing in {root} matches {scope!r}")


log = logging.getLogger(__name__)


class RunHandle:
    """A submitted run: follow its events, wait for its result, cancel it."""

    def __init__(self, client: Client, run: RunId, workflow: str) -> None:
        self._client = client
        self.id = run
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"<RunHandle {self.id} of {self.workflow!r}>"

    def events(self) -> AsyncIterator[RunEvent]:
        """Every task and run state change from now on; ends when the run ends."""
        return self._client._events(self.id)

    async def wait(self) -> RunResult:
        """Wait for the run to end; per-task state, exit code, duration, outputs."""
        return await self._client._wait(self.id)

    async def cancel(self, reason: str = "cancelled by user") -> None:
        """Cancel the run: queued tasks never start, running ones are killed."""
        await self._client._cancel(self.id, reason)

    async def fetch(self, task: str, path: str, dest: Path | str) -> Path:
        """Copy ``path`` (a file, directory or glob) of ``task``'s output into ``dest``.

        Files keep their path relative to the task's directory. From an agent on this
        host they are copied; from others pulled over the data plane (checksummed).

        Returns:
            ``dest``.

        Raises:
            DagonError: the task did not succeed, or its output cannot be reached.
        """
        return await self._client._fetch(self.id, task, path, Path(dest))


class Client:
    """See :func:`connect`."""

    def __init__(
        self,
        *,
        broker: str | None = None,
        coordinator: str | None = None,
        home: Path | None = None,
        mqtt_protocol: str | None = None,
        agent_slots: int | None = None,
        heartbeat_ttl: float = 15.0,
        requeue_grace: float = DEFAULT_REQUEUE_GRACE,
        publish_results: bool = True,
        insecure: bool | None = None,
        mqtt_auth: MqttAuth | None = None,
        agent_scratch: Path | None = None,
        keep_scratch: bool = False,
    ) -> None:
        self.home = home or dagon_home()
        self.keep_scratch = keep_scratch
        self.insecure = insecure_from_env(insecure)
        self._auth = mqtt_auth
        self._agent_scratch = agent_scratch
        self.broker = broker_from_env(broker)
        if coordinator is not None and self.broker is None:
            raise DagonError("a standalone coordinator needs a broker: pass broker= or set DAGON_BROKER")
        self.coordinator_id = coordinator
        self.embedded = self.broker is None
        self._protocol = mqtt_protocol or ("3.1.1" if self.embedded else os.environ.get("DAGON_MQTT_PROTOCOL", "5"))
        self._agent_slots = agent_slots
        self._heartbeat_ttl = heartbeat_ttl
        self._requeue_grace = requeue_grace
        self._publish_results = publish_results
        self._stack = AsyncExitStack()
        self.coordinator: Coordinator | None = None
        self._transport: Transport | None = None
        self._remote: RemoteRuns | None = None
        self._codec: Codec | None = None
        self._reader: asyncio.Task[None] | None = None
        self.url = ""

    def _connect(self, client_id: str) -> Callable[[Will], Transport]:
        def factory(will: Will) -> Transport:
            return MqttTransport(self.url, client_id=client_id, will=will, protocol=self._protocol, auth=self._auth)

        return factory

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        suffix = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
        if self.embedded:
            from dagon._embedded import EmbeddedBroker

            broker = await self._stack.enter_async_context(EmbeddedBroker(port=0))
            self.url = broker.url
        else:
            assert self.broker is not None
            self.url = self.broker
            if self._auth is None:
                self._auth = MqttAuth.from_env(os.environ)
        if self.insecure:
            warn_insecure(log)
        if self.coordinator_id is None:
            self.home.mkdir(parents=True, exist_ok=True)
            store = RunStore(self.home / "runs.sqlite")
            self._stack.callback(store.close)
            coordinator_id = f"client-{suffix}"
            signer, trust = await asyncio.to_thread(self._coordinator_keys)
            self.coordinator = await self._stack.enter_async_context(
                Coordinator(
                    connect=self._connect(coordinator_id),
                    coordinator_id=coordinator_id,
                    store=store,
                    heartbeat_ttl=self._heartbeat_ttl,
                    requeue_grace=self._requeue_grace,
                    publish_results=self._publish_results,
                    signer=signer,
                    trust=trust,
                    insecure=self.insecure,
                    relay_dir=self.home / "relay",
                    ephemeral=True,
                )
            )
            if self.embedded:
                from dagon._local import start_embedded_agent

                await start_embedded_agent(
                    self._stack,
                    url=self.url,
                    home=self.home,
                    slots=self._agent_slots,
                    insecure=self.insecure,
                    scratch=self._agent_scratch,
                )
                # Closed in reverse: the coordinator detaches before the agent above shuts down.
                self._stack.push_async_callback(self.coordinator.detach)
                async with asyncio.timeout(30):
                    await self.coordinator.wait_for_agents(1)
            return
        transport = MqttTransport(
            self.url, client_id=f"dagon-client-{suffix}", protocol=self._protocol, auth=self._auth
        )
        self._transport = await self._stack.enter_async_context(transport)
        if self.coordinator_id == "auto":
            self.coordinator_id = await find_coordinator(transport, transport.messages())
        signer = None if self.insecure else await asyncio.to_thread(client_signer, self.home)
        self._codec = Codec(sender=f"client/{suffix}", signer=signer)
        self._remote = RemoteRuns(transport)
        self._reader = asyncio.create_task(self._read(), name="dagon-client-reader")
        self._stack.push_async_callback(self._stop_reader)

    def _coordinator_keys(self) -> tuple[Signer | None, CoordinatorTrust | None]:
        if self.insecure:
            return None, None
        return coordinator_signer(self.home), coordinator_trust(self.home)

    async def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        assert self._transport is not None and self._remote is not None
        async for msg in self._transport.messages():
            self._remote.on_message(msg.topic, msg.payload)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(et, e, tb)

    async def _fetch(self, run: RunId, task: str, path: str, dest: Path) -> Path:
        coordinator = self.coordinator
        if coordinator is None:
            raise DagonError(
                "fetching outputs needs the coordinator in this process (dagon.connect without coordinator=);"
                " a standalone coordinator's outputs are fetched on its machine"
            )
        result = await self._wait(run)
        outcome = result[task]
        if not outcome.ok or outcome.agent is None:
            raise DagonError(f"task {task!r} of run {run} did not succeed ({outcome.state.value}): nothing to fetch")
        source = coordinator.output_source(run, task, outcome.attempt, outcome.agent, path)
        local = Path(outcome.workdir)
        here = os.environ.get("DAGON_HOST_ID") or host_id()
        if source.source_host == here and await asyncio.to_thread(local.is_dir):
            await asyncio.to_thread(_copy_covered, local, path, dest)
            return dest
        if not source.url:
            raise DagonError(f"the output of {task!r} cannot be reached: agent {outcome.agent} serves no data")
        if source.url.startswith("ssh://"):
            raise DagonError(
                f"the output of {task!r} is reachable only over SSH ({source.url}{outcome.workdir}): copy it from there"
            )
        try:
            await pull(source.url, source.token, dest, wait_for_upload=300.0 if source.relay else 0.0)
        except TransportError as exc:
            raise DagonError(f"fetching {path} of {task!r}: {exc}") from None
        return dest

    # -- API -----------------------------------------------------------------

    async def submit(self, workflow: Workflow, *, keep_scratch: bool | None = None) -> RunHandle:
        """Validate ``workflow`` and start running it; raises ValidationError first if invalid.

        Args:
            keep_scratch: garbage-collect nothing of this run (default: the client's setting).
        """
        keep = self.keep_scratch if keep_scratch is None else keep_scratch
        if self.coordinator is not None:
            run = await self.coordinator.submit(workflow, keep_scratch=keep)
            return RunHandle(self, run, workflow.name)
        assert self._transport is not None and self._remote is not None and self._codec is not None
        workflow.graph(external=True)  # validate locally: fail before anything is sent
        run = new_run_id(workflow.name)
        await self._remote.track(run)
        assert self.coordinator_id is not None
        payload = self._codec.encode(SubmitRun(run=run, workflow=workflow.to_dict(), keep_scratch=keep))
        await self._transport.publish(topics.coordinator_inbox(self.coordinator_id), payload)
        return RunHandle(self, run, workflow.name)

    async def resume(self, run: str) -> RunHandle:
        """Run again what did not succeed in ``run`` (from the run store), keeping what succeeded.

        In-process, the run is taken from this home's store (a run of an interrupted
        ``dagon run``, or one that failed); with ``coordinator=``, the standalone
        coordinator resumes a run of its own store.
        """
        if self.coordinator is not None:
            resumed = await self.coordinator.resume(RunId(run))
            return RunHandle(self, resumed, self.coordinator.engine.run(resumed).workflow.name)
        assert self._transport is not None and self._remote is not None and self._codec is not None
        assert self.coordinator_id is not None
        await self._remote.track(RunId(run), since=time.time())
        payload = self._codec.encode(ResumeRun(run=RunId(run)))
        await self._transport.publish(topics.coordinator_inbox(self.coordinator_id), payload)
        return RunHandle(self, RunId(run), "")

    async def attach(self, run: str) -> RunHandle:
        """A handle on an existing run (remote mode: followed on its public topics)."""
        if self.coordinator is not None:
            view = self.coordinator.engine.run(RunId(run))
            return RunHandle(self, RunId(run), view.workflow.name)
        assert self._remote is not None
        await self._remote.track(RunId(run))
        return RunHandle(self, RunId(run), "")

    def _events(self, run: RunId) -> AsyncIterator[RunEvent]:
        if self.coordinator is not None:
            return self.coordinator.events(run)
        assert self._remote is not None
        return self._remote.events(run)

    async def _wait(self, run: RunId) -> RunResult:
        if self.coordinator is not None:
            return await self.coordinator.wait(run)
        assert self._remote is not None
        return await self._remote.wait(run)

    async def _cancel(self, run: RunId, reason: str) -> None:
        if self.coordinator is not None:
            await self.coordinator.cancel(run, reason)
            return
        assert self._transport is not None and self._codec is not None and self.coordinator_id is not None
        payload = self._codec.encode(CancelRun(run=run, reason=reason))
        await self._transport.publish(topics.coordinator_inbox(self.coordinator_id), payload)


def connect(
    broker: str | None = None,
    *,
    coordinator: str | None = None,
    home: Path | None = None,
    mqtt_protocol: str | None = None,
    agent_slots: int | None = None,
    heartbeat_ttl: float = 15.0,
    requeue_grace: float = DEFAULT_REQUEUE_GRACE,
    publish_results: bool = True,
    insecure: bool | None = None,
    mqtt_auth: MqttAuth | None = None,
    agent_scratch: Path | None = None,
    keep_scratch: bool = False,
) -> Client:
    """Connect to dagon; use as ``async with dagon.connect(...) as client``.

    Args:
        broker: ``mqtt://`` / ``mqtts://`` URL; default ``$DAGON_BROKER``; if neither
            is set, an embedded broker and agent are started in this process.
        coordinator: id of a standalone coordinator to hand runs to (``"auto"``
            finds the online one); default: a coordinator in this process.
        home: where local state lives (default ``$DAGON_HOME``).
        mqtt_protocol: ``"5"`` or ``"3.1.1"`` (default 5; 3.1.1 for the embedded broker).
        agent_slots: slots of the embedded agent (default: CPU count).
        heartbeat_ttl: seconds of agent silence before it counts as lost.
        requeue_grace: seconds a lost agent's tasks wait for it to reconnect before they are
            requeued (default 10 s: a restarting broker publishes every agent's Last Will).
        publish_results: publish public JSON task results and events (in-process
            coordinator only; run status is always published).
        insecure: neither sign nor verify messages (development only; default
            ``$DAGON_INSECURE``). By default everything is signed with the keys in
            ``$DAGON_HOME/keys``, created on first use.
        mqtt_auth: TLS files and credentials for the broker (default: from the
            ``DAGON_MQTT_*`` environment variables).
        agent_scratch: scratch root of the embedded agent (default ``$DAGON_HOME/scratch``).
        keep_scratch: runs submitted through this client keep every task directory
            (no garbage collection of intermediate outputs).
    """
    return Client(
        broker=broker,
        coordinator=coordinator,
        home=home,
        mqtt_protocol=mqtt_protocol,
        agent_slots=agent_slots,
        heartbeat_ttl=heartbeat_ttl,
        requeue_grace=requeue_grace,
        publish_results=publish_results,
        insecure=insecure,
        mqtt_auth=mqtt_auth,
        agent_scratch=agent_scratch,
        keep_scratch=keep_scratch,
    )
