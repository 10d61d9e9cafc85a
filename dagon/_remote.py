"""Talking to a standalone coordinator through the broker (``dagon submit``).

Runs are submitted with a :class:`~dagon.protocol.SubmitRun` message to the
coordinator's inbox; progress comes back on the public JSON topics
(``dagon/v1/runs/{run}/…``), so anything here works with any MQTT client too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagon.core import RunEvent, RunResult, RunState, TaskOutcome, Workflow
from dagon.core._coordinator import new_run_id
from dagon.protocol import (
    SCHEMA_COORDINATOR,
    SCHEMA_EVENTS,
    SCHEMA_RUN_STATUS,
    SCHEMA_TASK_RESULT,
    Answer,
    CancelRun,
    Codec,
    DagonError,
    LogsRequest,
    ProtocolError,
    ResumeRun,
    RunId,
    SubmitRun,
    bind_grant,
    decode_public,
    new_message_id,
    topics,
)
from dagon.protocol.transport import Transport

__all__ = ["DEFAULT_ANSWER_TIMEOUT", "ClientIdentity", "NoAnswer", "RemoteRuns", "RunRejected", "find_coordinator"]

log = logging.getLogger(__name__)

DEFAULT_ANSWER_TIMEOUT = 15.0  # seconds a client waits for the coordinator's answer to a request
RESEND_EVERY = 3.0  # seconds without an answer before a request is sent again (see RemoteRuns.request)

_TERMINAL_STATES = frozenset({s.value for s in RunState if s is not RunState.RUNNING} | {"rejected"})


Request = SubmitRun | CancelRun | ResumeRun | LogsRequest


class RunRejected(DagonError):
    """The coordinator answered a request (submit, cancel, resume, logs) with a refusal.

    Attributes:
        run: the run the request was about.
        code: why, for programs: ``"untrusted"`` (the client key is not trusted), ``"unsigned"``,
            ``"expired"`` (clock difference), ``"invalid"`` (refused at admission), ``"unknown_run"``,
            ``"ended"`` (nothing left to cancel), ``"offline"`` (a log request: its agent is not online).
        reason: the coordinator's words.
    """

    def __init__(self, message: str, *, run: str, code: str, reason: str) -> None:
        super().__init__(message)
        self.run = run
        self.code = code
        self.reason = reason


class NoAnswer(DagonError):
    """No coordinator answered a request within the answer timeout."""


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who the client is to the coordinator, for its answers and the errors it prints.

    Attributes:
        reply_to: the client's reply id (answers come on ``topics.client_answers(reply_to)``).
        key_id: id of the key the client signs with ("" when it signs nothing: --insecure).
        fingerprint: that key's ``SHA256:…`` fingerprint.
        public_key_file: where its public key is (what to copy to the coordinator's machine).
    """

    reply_to: str
    key_id: str = ""
    fingerprint: str = ""
    public_key_file: str = ""


@dataclass(eq=False)
class _RunState:
    status: dict[str, Any] | None = None
    results: dict[str, TaskOutcome] = field(default_factory=dict)
    watchers: list[asyncio.Queue[RunEvent | None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    since: float = 0.0  # a status of a run that ended before this is old (the run was resumed)

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status.get("state") in _TERMINAL_STATES


class RemoteRuns:
    """Runs of a standalone coordinator: handed over through its inbox, followed on their public topics.

    Every request (submit, cancel, resume) waits for the coordinator's signed answer, sending
    the request again every :data:`RESEND_EVERY` seconds (a coordinator killed before it
    stored a submission never answers it; restarted, it takes the copy) for at most
    ``answer_timeout`` seconds in all.

    Args:
        transport: an opened transport (the caller feeds what arrives to :meth:`on_message`).
        codec: signs the requests (``sender`` and ``signer``) and verifies the answers (``trust``:
            the coordinator keys this client pins; ``None`` only with --insecure).
        coordinator: the coordinator's id.
        identity: the client's reply id and key, for answers and errors.
        broker: the broker's URL, named in errors.
        answer_timeout: seconds to wait for an answer.
    """

    def __init__(
        self,
        transport: Transport,
        codec: Codec,
        coordinator: str,
        *,
        identity: ClientIdentity | None = None,
        broker: str = "the broker",
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
        offline: bool = False,
    ) -> None:
        if answer_timeout <= 0:
            raise ValueError(f"answer_timeout must be positive, got {answer_timeout}")
        self._transport = transport
        self._codec = codec
        self._coordinator = coordinator
        self._inbox = topics.coordinator_inbox(coordinator)
        self._runs: dict[str, _RunState] = {}
        self.identity = identity or ClientIdentity(reply_to=f"client-{new_message_id()}")
        self._answers_topic = topics.client_answers(self.identity.reply_to)
        self._broker = broker
        self.answer_timeout = answer_timeout
        self._offline = offline  # the coordinator's retained status said offline when it was chosen
        self._waiting: dict[str, asyncio.Future[Answer]] = {}  # request id -> its answer
        self._refused: str = ""  # the last answer that could not be verified (named in a timeout)

    async def open(self) -> None:
        """Subscribe to this client's answers (before any request goes out)."""
        await self._transport.subscribe(self._answers_topic)

    async def request(self, make: Callable[[str], Request], run: RunId) -> Answer:
        """Send the request ``make(reply_to)`` until the coordinator answers it; return the answer.

        Raises:
            RunRejected: it answered no (the message says why and, for a key it does not trust,
                which command fixes that).
            NoAnswer: no answer within ``answer_timeout`` seconds.
        """
        message = make(self.identity.reply_to)
        answered: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        ids: list[str] = []
        deadline = time.monotonic() + self.answer_timeout
        try:
            while not answered.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoAnswer(self._no_answer(message.OP))
                ids.append(new_message_id())
                self._waiting[ids[-1]] = answered
                if len(ids) > 1:
                    log.info("no answer from coordinator %s yet: sending %s of run %s again", self._coordinator,
                             message.OP, run)  # fmt: skip
                with contextlib.suppress(DagonError):
                    await self._transport.publish(self._inbox, self._codec.encode(message, msg_id=ids[-1]))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(RESEND_EVERY, left)):
                        await asyncio.shield(answered)
        finally:
            for msg_id in ids:
                self._waiting.pop(msg_id, None)
        answer = answered.result()
        if not answer.accepted:
            raise RunRejected(self._rejected(message.OP, answer), run=run, code=answer.code, reason=answer.reason)
        return answer

    def _no_answer(self, op: str) -> str:
        what = {"submit": "the submission", "cancel_run": "the cancellation", "resume": "the resumption",
                "logs": "the log request"}[op]  # fmt: skip
        ident = self._coordinator
        start = f"dagon coordinator --broker {self._broker}" + ("" if ident == "main" else f" --id {ident}")
        text = (
            f"no coordinator with id {ident!r} answered {what} on {self._broker} within"
            f" {self.answer_timeout:g} s; is `{start}` running"
        )
        text += " (its status says it is offline)?" if self._offline else "?"
        if self._refused:
            text += f" An answer arrived but was refused: {self._refused}"
        return text + " (--answer-timeout waits longer)"

    def _rejected(self, op: str, answer: Answer) -> str:
        ident = self._coordinator
        if answer.code == "untrusted" and self.identity.fingerprint:
            where = self.identity.public_key_file or "this client's public key (`dagon keys client`)"
            return (
                f"coordinator {ident!r} does not trust this client's key {self.identity.fingerprint}:"
                f" copy {where} to the coordinator's machine and run there `dagon keys trust-client client.pub`"
                f" (no restart needed), then {'run dagon logs' if op == 'logs' else 'submit'} again"
            )
        if answer.code == "unsigned":
            return (
                f"coordinator {ident!r} accepts only signed requests and this client runs --insecure ({answer.reason})"
            )
        verb = {"submit": "rejected run", "cancel_run": "cannot cancel run", "resume": "cannot resume run",
                "logs": "grants no log download for run"}[op]  # fmt: skip
        return f"coordinator {ident!r} {verb} {answer.run}: {answer.reason}"

    async def submit(self, workflow: Workflow, *, keep_scratch: bool) -> RunId:
        workflow.graph(external=True)  # fail here, before anything is sent
        run = new_run_id(workflow.name)
        await self.track(run)
        spec = workflow.to_dict()
        await self.request(lambda reply: SubmitRun(run, spec, keep_scratch, reply), run)
        return run

    async def aclose(self) -> None:
        """Nothing is sent from now on (the client is closing)."""
        for waiting in self._waiting.values():
            waiting.cancel()

    async def resume(self, run: RunId) -> tuple[RunId, str]:
        await self.track(run, since=time.time())
        await self.request(lambda reply: ResumeRun(run, reply), run)
        return run, ""

    async def attach(self, run: RunId) -> str:
        await self.track(run)
        return ""

    async def cancel(self, run: RunId, reason: str) -> None:
        await self.track(run)
        await self.request(lambda reply: CancelRun(run, reason, reply), run)

    async def log_grant(self, run: RunId, task: str, attempt: int, stream: str) -> tuple[str, str]:
        """The data URL of the agent holding ``stream`` of one task attempt, and a ``logs`` grant
        for it bound with this client's key (``dagon.core._logdesk``).

        Raises:
            RunRejected: refused (``code``: ``"untrusted"``, ``"offline"`` — the agent is not online
                with a data server —, ``"unknown_run"``, ``"invalid"``).
            NoAnswer: no answer in time.
            DagonError: an --insecure client has no key to bind a grant with.
        """
        signer = self._codec.signer
        if signer is None:
            raise DagonError("reading a log from a client machine needs its client key (not --insecure)")
        answer = await self.request(lambda reply: LogsRequest(run, task, attempt, stream, reply), run)
        if not answer.url or not answer.token:
            raise DagonError(f"coordinator {self._coordinator!r} answered the log request without a grant")
        return answer.url, bind_grant(answer.token, signer)

    async def fetch(self, run: RunId, task: str, path: str, dest: Path) -> Path:
        raise DagonError(
            "fetching outputs needs the coordinator in this process (dagon.connect without coordinator=);"
            " a standalone coordinator's outputs are fetched on its machine"
        )

    async def track(self, run: RunId, *, since: float = 0.0) -> None:
        """Follow ``run``; ``since``: ignore the retained end of an earlier life of it (resumed runs)."""
        if run in self._runs:
            self._runs[run].since = max(self._runs[run].since, since)
            self._runs[run].status = None
            return
        self._runs[run] = _RunState(since=since)
        await self._transport.subscribe(topics.run_status(run), topics.run_events(run), topics.run_task_results(run))

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._answers_topic:
            self._on_answer(payload)
            return
        parts = topic.split("/")
        if len(parts) < 4 or parts[2] != "runs":
            return
        run = topics.unescape_level(parts[3])
        state = self._runs.get(run)
        if state is None or not payload:
            return
        try:
            if parts[4] == "status":
                doc = decode_public(payload, schema=SCHEMA_RUN_STATUS)
                ended = doc.get("finished_at")
                if state.since and doc.get("state") != "rejected" and isinstance(ended, float) and ended < state.since:
                    return  # how the run ended before it was resumed
                state.status = doc
                if state.finished:
                    for q in state.watchers:
                        q.put_nowait(None)
            elif parts[4] == "events":
                doc = decode_public(payload, schema=SCHEMA_EVENTS)
                for item in doc.get("events", []):
                    event = RunEvent.from_doc(run, item)
                    for q in state.watchers:
                        q.put_nowait(event)
            elif parts[4] == "tasks":
                outcome = TaskOutcome.from_doc(decode_public(payload, schema=SCHEMA_TASK_RESULT))
                state.results[outcome.name] = outcome
        except Exception as exc:  # anyone may publish there: one bad document must not end the client
            log.warning("ignoring malformed message on %s: %s: %s", topic, type(exc).__name__, exc)
            return
        state.changed.set()

    def _on_answer(self, payload: bytes) -> None:
        try:
            envelope = self._codec.decode(payload)
        except ProtocolError as exc:  # e.g. a coordinator key this client does not pin
            self._refused = str(exc)
            log.warning("ignoring an answer on %s: %s", self._answers_topic, exc)
            return
        answer = envelope.message
        if not isinstance(answer, Answer) or envelope.src != f"coordinator/{self._coordinator}":
            return
        if answer.code == "untrusted" and answer.key != self.identity.key_id:
            # someone published a copy of our request under another key: not our answer
            log.warning("ignoring a refusal of a copy of request %s signed by another key", answer.request)
            return
        waiting = self._waiting.get(answer.request)
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)

    async def events(self, run: RunId) -> AsyncIterator[RunEvent]:
        state = self._runs[run]
        if state.finished:
            return
        queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
        state.watchers.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            state.watchers.remove(queue)

    async def wait(self, run: RunId) -> RunResult:
        state = self._runs[run]
        while not state.finished:
            state.changed.clear()
            await state.changed.wait()
        assert state.status is not None
        status = state.status
        if status.get("state") == "rejected":
            raise DagonError(f"the coordinator rejected run {run}: {status.get('cause')}")
        # Task results travel on their own topics; give stragglers a moment.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while len(state.results) < int(status.get("tasks", 0)):
                    state.changed.clear()
                    await state.changed.wait()
        return RunResult(
            run=run,
            workflow=str(status.get("workflow", "")),
            state=RunState(status["state"]),
            cause=str(status.get("cause", "")),
            tasks=dict(state.results),
            submitted_at=float(status.get("submitted_at") or 0.0),
            finished_at=status.get("finished_at"),
            scratch_peak={str(k): int(v) for k, v in (status.get("scratch_peak") or {}).items()},
        )

    def status(self, run: RunId) -> dict[str, Any] | None:
        return self._runs[run].status


WANTED_WAIT = 30.0  # seconds to wait for a named coordinator's status by default (it may be starting)


async def find_coordinator(
    transport: Transport,
    messages: AsyncIterator[Any],
    *,
    wait: float = 2.0,
    wanted: str | None = None,
    wanted_wait: float = WANTED_WAIT,
    broker: str = "this broker",
    offline: list[str] | None = None,
) -> str:
    """The id of the coordinator to hand runs to, from the coordinators' retained statuses.

    ``wanted=None`` (``"auto"``): an online one, within ``wait`` seconds. A named one: once its
    status appears (within ``wanted_wait`` s: it may be starting); when that status says
    offline, its broker session queues the run for it, a warning says so and its id is added
    to ``offline``.

    Raises:
        NoAnswer: the named one was never seen on this broker.
        DagonError: no coordinator is online — a run handed to an inbox nobody reads would
            wait for ever.
    """
    await transport.subscribe(topics.all_coordinator_status())
    found: str | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait if wanted is None else max(wait, wanted_wait)):
            async for msg in messages:
                if not msg.topic.endswith("/status") or "/coordinator/" not in msg.topic:
                    continue
                try:
                    doc = decode_public(msg.payload, schema=SCHEMA_COORDINATOR)
                except ProtocolError:
                    continue
                # in-process coordinators of other clients ("client-…") take no submissions
                ident = str(doc.get("id", ""))
                if ident.startswith("client-") or wanted not in (None, ident):
                    continue
                if not doc.get("online"):
                    if wanted is None:
                        continue
                    log.warning(
                        "coordinator %r is offline: the run waits in its broker session until it is back", ident
                    )
                    if offline is not None:
                        offline.append(ident)
                found = ident
                break
    await transport.unsubscribe(topics.all_coordinator_status())
    if found is None:
        if wanted:
            start = f"dagon coordinator --broker {broker}" + ("" if wanted == "main" else f" --id {wanted}")
            raise NoAnswer(
                f"no coordinator with id {wanted!r} answered on {broker} within {max(wait, wanted_wait):g} s"
                f" (its status was never seen there); is `{start}` running? (`--coordinator auto` picks the"
                " online one)"
            )
        raise DagonError(
            f"no dagon coordinator is online on {broker}; start one with 'dagon coordinator --broker {broker}'"
        )
    return found
