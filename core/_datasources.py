"""Where a task's inputs come from: grants, source choice, the relay, checkpoint storage.

The coordinator side of the data plane (the agent side is ``agent/_staging.py``
and ``protocol/transport/_dataplane.py``). For an input produced on another host
the cheapest reachable copy wins:

1. a checkpoint copy, once its producer is gone (an agent announcing itself as a
   checkpoint store, or this coordinator's checkpoint directory);
2. the producer's data server (HTTP, with a grant scoped to that one path);
3. the producer's SSH server (the consumer's own key authenticates it);
4. the relay: an unreachable producer is asked (once) to upload there.

Upload requests (``UploadOutputs``) are queued here and sent by the coordinator's
next drive pass (:meth:`DataSources.take_uploads`).

A read grant names the consumer attempt it was minted for, and expires with it: this
records which server (an agent's data server, or this coordinator's relay) each attempt
was sent to, and when the attempt ends (:meth:`DataSources.attempt_ended`) revokes its
grants there — a ``RevokeGrants`` to the agent with the next drive pass (again whenever
that agent comes back online, until the grants would have expired), or at once for the
relay. Memory: one entry per running attempt with remote inputs, plus the revocations
of the last grant TTL (15 minutes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

from dagon.core._engine import Engine
from dagon.core._errors import ValidationError
from dagon.core._placement import AgentView
from dagon.core._views import TaskView
from dagon.protocol import (
    DEFAULT_GRANT_TTL,
    AgentId,
    Grant,
    ProtocolError,
    RevokeGrants,
    RunId,
    Signer,
    StageInput,
    TaskAssignment,
    TaskName,
    TaskRef,
    UploadOutputs,
    bind_grant,
    mint_grant,
    raw_public_key,
    read_grant,
)
from dagon.protocol.transport import DataServer

__all__ = ["RELAY_KEEP", "DataSources"]

log = logging.getLogger(__name__)

RELAY_KEEP: Final = 600.0  # seconds relayed outputs outlive their run
RELAY: Final = ""  # the server id of this coordinator's relay (and checkpoint storage)
_REVOKE_BATCH: Final = 2000  # attempts per RevokeGrants message


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _safe(name: str) -> str:
    """A run or task name as one directory level of the relay (names are validated; this is belt and braces)."""
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ProtocolError(f"{name!r} cannot name a relay directory", reason="value")
    return name


class DataSources:
    """Grants and input sources of one coordinator, with its relay and checkpoint storage.

    Args:
        engine: the coordinator's engine (agents, runs; read only, except
            ``durable_checkpoints``, which this keeps up to date).
        signer: signs grants (an ``--insecure`` coordinator passes a throwaway key).
        relay_dir, relay_host, relay_port, relay_url, relay_tls, checkpoint_dir:
            see :class:`~dagon.core.Coordinator`.
        spawn: runs a background coroutine (relay expiry) in the coordinator's task group.
        holder: the raw key of a grant's audience (an enrolled agent), to bind the grant to:
            only that agent can then use it (``None`` or ``b""``: a bearer grant).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        signer: Signer,
        relay_dir: Path | None,
        relay_host: str,
        relay_port: int,
        relay_url: str | None,
        relay_tls: ssl.SSLContext | None,
        checkpoint_dir: Path | None,
        spawn: Callable[[Coroutine[Any, Any, None], str], bool],
        holder: Callable[[str], bytes] | None = None,
    ) -> None:
        self._engine = engine
        self._holder = holder
        self._signer = signer
        self.grant_ttl = DEFAULT_GRANT_TTL
        self._spawn = spawn
        self._relay_url = relay_url
        if checkpoint_dir is None and relay_dir is not None:
            checkpoint_dir = relay_dir.parent / "checkpoints"
        self._checkpoint_dir = checkpoint_dir
        self._relay_dir = relay_dir
        self.relay: DataServer | None = None
        engine.durable_checkpoints = relay_dir is not None
        if relay_dir is not None:
            own = {signer.key_id: signer.public_key}
            self.relay = DataServer(
                authorize=lambda token: self._unrevoked(read_grant(token, own)),
                locate=self._locate,
                host=relay_host,
                port=relay_port,
                uploads=True,
                tls=relay_tls,
            )
        self._uploads_asked: set[tuple[str, str, int, str]] = set()
        # (run, task, attempt) of a checkpoint -> the agent storing its copy ("" = checkpoint_dir)
        self._checkpoint_at: dict[tuple[str, str, int], str] = {}
        self._relay_finished: dict[RunId, float] = {}
        self._uploads: list[tuple[AgentId, UploadOutputs]] = []
        # (run, task) -> attempt -> server -> when the last grant sent there expires
        self._granted: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
        # server -> consumer attempt -> until when its grants are refused (to send, and send again)
        self._revoked: dict[str, dict[TaskRef, float]] = {}
        self._revoke_out: dict[str, set[TaskRef]] = {}  # revocations to send with the next pass

    # -- grants and URLs --------------------------------------------------------

    def grant(
        self, *, run: RunId, task: str, attempt: int, path: str, audience: str, op: str = "read",
        consumer: TaskRef | None = None,
    ) -> str:  # fmt: skip
        """A data-plane token for ``path`` of one attempt's directory (see ``dagon.protocol.Grant``);
        with ``consumer``, revoked when that attempt ends."""
        expires = time.time() + self.grant_ttl
        holder = self._holder(audience) if self._holder is not None else b""  # only it can use the grant
        bound = (consumer.run, consumer.task, consumer.attempt) if consumer is not None else None
        return mint_grant(self._signer, Grant(run, task, attempt, path, audience, op, expires, holder, bound))

    # -- revocation -------------------------------------------------------------

    def _sent(self, consumer: TaskRef, server: str) -> None:
        attempts = self._granted.setdefault((consumer.run, consumer.task), {})
        attempts.setdefault(consumer.attempt, {})[server] = time.time() + self.grant_ttl

    def attempt_ended(self, run: RunId, task: str) -> None:
        """No attempt of ``task`` is active any more: revoke the grants minted for its attempts."""
        attempts = self._granted.pop((run, task), None)
        now = time.time()
        for attempt, servers in (attempts or {}).items():
            for server, until in servers.items():
                ref = TaskRef(run, TaskName(task), attempt)
                self._revoked.setdefault(server, {})[ref] = until
                if server != RELAY:
                    self._revoke_out.setdefault(server, set()).add(ref)
        for server, refs in list(self._revoked.items()):
            live = {ref: until for ref, until in refs.items() if until >= now}
            if live:
                self._revoked[server] = live
            else:
                del self._revoked[server]

    def agent_online(self, agent: AgentId) -> None:
        """``agent`` (re)joined: it may have missed revocations, or forgotten them with an old version."""
        if agent in self._revoked:
            self._revoke_out.setdefault(agent, set()).update(self._revoked[agent])

    def take_revocations(self) -> list[tuple[AgentId, RevokeGrants]]:
        """The revocations to send now (at most :data:`_REVOKE_BATCH` attempts a message)."""
        out = []
        now = time.time()
        for server, refs in sorted(self._revoke_out.items()):
            known = self._revoked.get(server, {})
            live = sorted((ref for ref in refs if known.get(ref, 0.0) >= now), key=lambda r: (r.run, r.task, r.attempt))
            for i in range(0, len(live), _REVOKE_BATCH):
                batch = tuple(live[i : i + _REVOKE_BATCH])
                out.append((AgentId(server), RevokeGrants(attempts=batch, until=max(known[r] for r in batch))))
        self._revoke_out.clear()
        return out

    def _unrevoked(self, grant: Grant) -> Grant:
        """The relay's check: ``grant``, unless its consumer attempt ended."""
        if grant.consumer is not None:
            ref = TaskRef(RunId(grant.consumer[0]), TaskName(grant.consumer[1]), grant.consumer[2])
            if self._revoked.get(RELAY, {}).get(ref, 0.0) >= time.time():
                raise ProtocolError(
                    f"data token for {grant.task}/{grant.path} was revoked: the attempt it was issued for has ended",
                    reason="revoked",
                )
        return grant

    def log_download(
        self, run: RunId, task: str, attempt: int, stream: str, agent: str, *, holder: bytes = b""
    ) -> tuple[str, str] | None:
        """Where and with which token one attempt's ``stream`` log is read from the agent holding it
        (``None``: that agent is not online with a data server). The grant (op ``logs``, 60 s) is
        bound to the coordinator's own key, as ``dagon logs`` binds its own; with ``holder`` (a
        client's raw public key) it is that client's to bind (``dagon.core._logdesk``)."""
        found = self._engine.agents.get(agent)  # type: ignore[call-overload]
        if found is None or not found.online or not found.capabilities.data_url:
            return None
        signer = self._signer
        key = holder or raw_public_key(signer.public_key)
        token = mint_grant(signer, Grant(run, task, attempt, stream, "client", "logs", time.time() + 60.0, key))
        return found.capabilities.data_url, token if holder else bind_grant(token, signer)

    @property
    def relay_url(self) -> str:
        """Where agents reach the relay ("" without one)."""
        if self.relay is None:
            return ""
        return self._relay_url or self.relay.url

    @property
    def own_checkpoints(self) -> bool:
        """Whether this coordinator keeps checkpoints itself (relay server and directory)."""
        return self.relay is not None and self._checkpoint_dir is not None

    def agents_changed(self) -> None:
        """An agent came or went: checkpoints are durable while some storage for them is online."""
        self._engine.durable_checkpoints = self.own_checkpoints or self._checkpoint_store() is not None

    @property
    def uploads_waiting(self) -> bool:
        return bool(self._uploads)

    def take_uploads(self) -> list[tuple[AgentId, UploadOutputs]]:
        """The upload requests to send now (each once)."""
        uploads, self._uploads = self._uploads, []
        return uploads

    # -- the relay's server -----------------------------------------------------

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
        view = self._engine.runs.get(run)
        task_view = view.tasks.get(task) if view is not None else None
        return task_view.spec.checkpoint if task_view is not None else None

    def run_ended(self, finished: RunId, now: float) -> None:
        """Relayed outputs stay for a while after their run ends (fetches, later runs referencing
        them), then are deleted; asking again re-uploads them."""
        if self.relay is None:
            return
        self._relay_finished[finished] = now
        expired = [run for run, at in self._relay_finished.items() if now - at > RELAY_KEEP]
        if not expired or self._relay_dir is None:
            return
        paths = [self._relay_dir / _safe(run) for run in expired]
        if not self._spawn(asyncio.to_thread(_remove_all, paths), "coordinator-relay-expiry"):
            return
        for run in expired:
            del self._relay_finished[run]
        self._uploads_asked = {key for key in self._uploads_asked if key[0] not in expired}

    # -- sources ----------------------------------------------------------------

    def with_grants(self, agent: AgentId, assignment: TaskAssignment) -> TaskAssignment:
        """Point inputs produced on other hosts at their producer's data server, with a grant each."""
        if not assignment.inputs:
            return assignment
        agents = self._engine.agents
        consumer = agents.get(agent)
        host = consumer.capabilities.host_id if consumer is not None else ""
        if all(i.source_host == host for i in assignment.inputs):
            return assignment
        inputs = []
        attempt = assignment.ref
        for item in assignment.inputs:
            if item.source_host != host:
                producer = agents.get(item.source_agent)
                run = RunId(item.source_run or assignment.run)
                token = self.grant(
                    run=run, task=item.task, attempt=item.source_attempt, path=item.path, audience=agent,
                    consumer=attempt,
                )  # fmt: skip
                item, server = self._source(item, producer, run, token)
                if server is not None:
                    self._sent(attempt, server)
            inputs.append(item)
        return dataclasses.replace(assignment, inputs=tuple(inputs))

    def _source(
        self, item: StageInput, producer: AgentView | None, run: RunId, token: str
    ) -> tuple[StageInput, str | None]:
        """The cheapest way to another host's output: its data server, else SFTP, else the relay;
        with the server that will see the grant (an agent id, :data:`RELAY`, or None: no grant)."""
        if (producer is None or not producer.online) and self.checkpointed(run, item.task):
            stored, server = self._checkpoint_source(run, item.task, item.source_attempt)
            if stored:
                return dataclasses.replace(item, url=stored, token=token, relay=True), server
        if producer is None:
            return item, None
        caps = producer.capabilities
        if not caps.reachable:
            relayed = self._through_relay(item, run, token)
            return relayed, RELAY if relayed.url else None
        if caps.data_url:
            return dataclasses.replace(item, url=caps.data_url, token=token), producer.id
        if caps.ssh_url:
            return dataclasses.replace(item, url=caps.ssh_url), None  # the consumer's own SSH key authenticates it
        return item, None

    def output_source(self, run: RunId, task: str, attempt: int, agent: str, path: str) -> StageInput:
        """Where a client can pull ``path`` of a finished task's output from (see
        :meth:`Coordinator.output_source`); ``relay`` set means an upload request is queued."""
        producer = self._engine.agents.get(AgentId(agent))
        if producer is None:
            raise ValidationError(f"agent {agent!r}, which ran {task!r}, is not known to this coordinator")
        caps = producer.capabilities
        item = StageInput(
            ref=f"workflow:///{task}/{path}", workflow="", task=TaskName(task), path=path,
            source_agent=AgentId(agent), source_host=caps.host_id, source_dir="", source_run=run,
            source_attempt=attempt,
        )  # fmt: skip
        token = self.grant(run=run, task=task, attempt=attempt, path=path, audience="client")
        return self._source(item, producer, run, token)[0]

    def _through_relay(self, item: StageInput, run: RunId, token: str) -> StageInput:
        """The producer cannot be reached: ask it (once) to upload to the relay; the consumer pulls there."""
        if self.relay is None:
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

    # -- checkpoints ------------------------------------------------------------

    def checkpointed(self, run: RunId, task: str) -> bool:
        """Whether ``task``'s outputs go to checkpoint storage (which then serves them)."""
        if not self.own_checkpoints and self._checkpoint_store() is None:
            return False
        return bool(self._marked_checkpoint(run, task))

    def _checkpoint_store(self, exclude: str = "") -> AgentView | None:
        """An online agent announcing itself as a checkpoint store (first by id)."""
        for agent in sorted(self._engine.agents.values(), key=lambda a: a.id):
            caps = agent.capabilities
            if agent.online and caps.checkpoint_store and caps.reachable and caps.data_url and agent.id != exclude:
                return agent
        return None

    def _checkpoint_source(self, run: RunId, task: str, attempt: int) -> tuple[str, str]:
        """The URL a checkpoint's copy is served at ("" if there is none), and its server."""
        holder = self._checkpoint_at.get((run, task, attempt))
        if holder:  # an agent: only while it is online
            agent = self._engine.agents.get(AgentId(holder))
            return (agent.capabilities.data_url if agent is not None and agent.online else ""), holder
        if holder == "" or self.own_checkpoints:
            return self.relay_url, RELAY  # the coordinator's own checkpoint storage
        return "", RELAY

    def task_succeeded(self, view: TaskView) -> None:
        """A task succeeded: if it is a checkpoint, have it saved (see :meth:`_save_checkpoint`)."""
        if view.spec.checkpoint and self.checkpointed(view.run.id, view.name):
            self._save_checkpoint(view)

    def _save_checkpoint(self, view: TaskView) -> None:
        """A checkpoint task succeeded: have its agent upload every output to checkpoint storage —
        an agent announcing itself as a checkpoint store if one is online, else the coordinator's
        checkpoint directory."""
        run, task = view.run.id, view.name
        agent = view.agent
        key = (run, task, view.attempt, "*")
        if agent is None or key in self._uploads_asked:
            return
        store = self._checkpoint_store(exclude=agent)
        if store is not None:
            holder, url = str(store.id), store.capabilities.data_url
        elif self.own_checkpoints:
            holder, url = "", self.relay_url
        else:
            return
        self._uploads_asked.add(key)
        self._checkpoint_at[(run, task, view.attempt)] = holder
        write = self.grant(run=run, task=task, attempt=view.attempt, path="*", audience=agent, op="write")
        upload = UploadOutputs(run=run, task=TaskName(task), attempt=view.attempt, path="*", url=url, token=write)
        self._uploads.append((agent, upload))
        log.info("checkpoint %s/%s attempt %d goes to %s", run, task, view.attempt, holder or "this coordinator")
