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
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

from dagon._keys import (
    client_public_key_file,
    client_signer,
    client_trust,
    coordinator_signer,
    coordinator_trust,
    warn_insecure,
)
from dagon._remote import DEFAULT_ANSWER_TIMEOUT, ClientIdentity, RemoteRuns, find_coordinator
from dagon._runs import LocalRuns, Runs
from dagon._settings import broker_from_env, dagon_home, insecure_from_env
from dagon.agent._private import private_dir
from dagon.core import Coordinator, CoordinatorTrust, RunEvent, RunResult, Workflow
from dagon.core._config import env_mqtt_protocol, run_store_path
from dagon.core._coordinator import DEFAULT_REQUEUE_GRACE
from dagon.core._retention import DEFAULT_KEEP_FINISHED, DEFAULT_KEEP_FINISHED_TASKS, Retention
from dagon.core._store import RunStore
from dagon.protocol import Codec, DagonError, KeyRing, RunId, Signer, fingerprint
from dagon.protocol.transport import MqttAuth, MqttTransport, Transport, Will

__all__ = ["Client", "RunHandle", "connect"]


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
        agent_scratch_layout: str = "run",
        keep_scratch: bool = False,
        keep_finished: float = DEFAULT_KEEP_FINISHED,
        keep_finished_tasks: int = DEFAULT_KEEP_FINISHED_TASKS,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
    ) -> None:
        if answer_timeout <= 0:
            raise DagonError(f"answer_timeout must be a positive number of seconds, got {answer_timeout}")
        self.answer_timeout = answer_timeout
        self.home = home or dagon_home()
        self._keep_finished = (keep_finished, keep_finished_tasks)
        self.keep_scratch = keep_scratch
        self.insecure = insecure_from_env(insecure)
        self._auth = mqtt_auth
        self._agent_scratch = agent_scratch
        self._agent_scratch_layout = agent_scratch_layout
        self.broker = broker_from_env(broker)
        if coordinator is not None and self.broker is None:
            raise DagonError("a standalone coordinator needs a broker: pass broker= or set DAGON_BROKER")
        self.coordinator_id = coordinator
        self.embedded = self.broker is None
        self._protocol = mqtt_protocol or ("3.1.1" if self.embedded else env_mqtt_protocol(os.environ))
        self._agent_slots = agent_slots
        self._heartbeat_ttl = heartbeat_ttl
        self._requeue_grace = requeue_grace
        self._publish_results = publish_results
        self._stack = AsyncExitStack()
        self.coordinator: Coordinator | None = None
        self._transport: Transport | None = None
        self._runs: Runs | None = None
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
            await asyncio.to_thread(private_dir, self.home)
            store = RunStore(run_store_path(self.home))
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
                    retention=Retention(keep_for=self._keep_finished[0], max_tasks=self._keep_finished[1]),
                )
            )
            if self.embedded:
                from dagon._local import drain, start_embedded_agent

                agent = await start_embedded_agent(
                    self._stack,
                    url=self.url,
                    home=self.home,
                    slots=self._agent_slots,
                    coordinator=coordinator_id,
                    insecure=self.insecure,
                    scratch=self._agent_scratch,
                    scratch_layout=self._agent_scratch_layout,
                )
                # Closed in reverse: the last acknowledgements arrive, then the coordinator
                # detaches, then the agent above shuts down.
                self._stack.push_async_callback(self.coordinator.detach)
                self._stack.push_async_callback(drain, agent)
                async with asyncio.timeout(30):
                    await self.coordinator.wait_for_agents(1)
            self._runs = LocalRuns(self.coordinator)
            return
        transport = MqttTransport(
            self.url, client_id=f"dagon-client-{suffix}", protocol=self._protocol, auth=self._auth
        )
        self._transport = await self._stack.enter_async_context(transport)
        wanted = None if self.coordinator_id == "auto" else self.coordinator_id
        offline: list[str] = []
        self.coordinator_id = await find_coordinator(
            transport, transport.messages(), wanted=wanted, wanted_wait=self.answer_timeout, broker=self.url,
            offline=offline,
        )  # fmt: skip
        client_key: Signer | None = None
        answers: KeyRing | None = None
        identity = ClientIdentity(reply_to=suffix)
        if not self.insecure:
            own, answers = await asyncio.to_thread(self._client_keys)
            pub = await asyncio.to_thread(client_public_key_file, self.home)
            identity = ClientIdentity(suffix, own.key_id, fingerprint(own.public_key), str(pub))
            client_key = own
        codec = Codec(sender=f"client/{suffix}", signer=client_key, trust=answers)
        remote = RemoteRuns(
            transport, codec, self.coordinator_id, identity=identity, broker=self.url,
            answer_timeout=self.answer_timeout, offline=bool(offline),
        )  # fmt: skip
        self._runs = remote
        self._reader = asyncio.create_task(self._read_loop(remote), name="dagon-client-reader")
        self._stack.push_async_callback(self._stop_reader)
        await remote.open()

    def _client_keys(self) -> tuple[Signer, KeyRing]:
        return client_signer(self.home), client_trust(self.home)

    def _coordinator_keys(self) -> tuple[Signer | None, CoordinatorTrust | None]:
        if self.insecure:
            return None, None
        return coordinator_signer(self.home), coordinator_trust(self.home)

    async def _stop_reader(self) -> None:
        if isinstance(self._runs, RemoteRuns):
            await self._runs.aclose()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read_loop(self, remote: RemoteRuns) -> None:
        assert self._transport is not None
        async for msg in self._transport.messages():
            remote.on_message(msg.topic, msg.payload)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(et, e, tb)

    @property
    def runs(self) -> Runs:
        if self._runs is None:
            raise DagonError("the client is not connected: use 'async with dagon.connect(...) as client'")
        return self._runs

    # -- API -----------------------------------------------------------------

    async def submit(self, workflow: Workflow, *, keep_scratch: bool | None = None) -> RunHandle:
        """Validate ``workflow`` and start running it; raises ValidationError first if invalid.

        Args:
            keep_scratch: garbage-collect nothing of this run (default: the client's setting).
        """
        keep = self.keep_scratch if keep_scratch is None else keep_scratch
        run = await self.runs.submit(workflow, keep_scratch=keep)
        return RunHandle(self, run, workflow.name)

    async def resume(self, run: str) -> RunHandle:
        """Run again what did not succeed in ``run`` (from the run store), keeping what succeeded.

        In-process, the run is taken from this home's store (a run of an interrupted
        ``dagon run``, or one that failed); with ``coordinator=``, the standalone
        coordinator resumes a run of its own store.
        """
        resumed, workflow = await self.runs.resume(RunId(run))
        return RunHandle(self, resumed, workflow)

    async def attach(self, run: str) -> RunHandle:
        """A handle on an existing run (remote mode: followed on its public topics)."""
        return RunHandle(self, RunId(run), await self.runs.attach(RunId(run)))

    def _events(self, run: RunId) -> AsyncIterator[RunEvent]:
        return self.runs.events(run)

    async def _wait(self, run: RunId) -> RunResult:
        return await self.runs.wait(run)

    async def _cancel(self, run: RunId, reason: str) -> None:
        await self.runs.cancel(run, reason)

    async def _fetch(self, run: RunId, task: str, path: str, dest: Path) -> Path:
        return await self.runs.fetch(run, task, path, dest)


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
    agent_scratch_layout: str = "run",
    keep_scratch: bool = False,
    keep_finished: float = DEFAULT_KEEP_FINISHED,
    keep_finished_tasks: int = DEFAULT_KEEP_FINISHED_TASKS,
    answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
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
        agent_scratch_layout: how the embedded agent names task directories: ``"run"``
            (``<run>/<task>-<attempt>``) or ``"dagonstar"`` (DAGonStar's ``<epoch ms>-<task>``).
        keep_scratch: runs submitted through this client keep every task directory
            (no garbage collection of intermediate outputs).
        keep_finished, keep_finished_tasks: how long a finished run stays in the in-process
            coordinator's memory (seconds) and how many tasks of finished runs it keeps at most;
            then the run is answered from the run store and its retained task results are cleared
            from the broker (docs/mqtt-topics.md).
        answer_timeout: with ``coordinator=``, seconds to wait for the coordinator's answer to a
            submission, cancellation or resumption (and for a named coordinator to be seen):
            ``submit`` returns once the run is accepted (stored), and raises ``RunRejected``
            with the reason when it is refused, ``NoAnswer`` when nobody answers in time.
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
        agent_scratch_layout=agent_scratch_layout,
        keep_scratch=keep_scratch,
        keep_finished=keep_finished,
        keep_finished_tasks=keep_finished_tasks,
        answer_timeout=answer_timeout,
    )
