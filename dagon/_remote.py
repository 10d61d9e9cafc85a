"""Talking to a standalone coordinator through the broker (``dagon submit``).

Runs are submitted with a :class:`~dagon.protocol.SubmitRun` message to the
coordinator's inbox; progress comes back on the public JSON topics
(``dagon/v1/runs/{run}/…``), so anything here works with any MQTT client too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from dagon.core import RunEvent, RunResult, RunState, TaskOutcome
from dagon.protocol import (
    SCHEMA_COORDINATOR,
    SCHEMA_EVENTS,
    SCHEMA_RUN_STATUS,
    SCHEMA_TASK_RESULT,
    DagonError,
    ProtocolError,
    RunId,
    decode_public,
    topics,
)
from dagon.protocol.transport import Transport

__all__ = ["RemoteRuns", "find_coordinator"]

log = logging.getLogger(__name__)

_TERMINAL_STATES = frozenset({s.value for s in RunState if s is not RunState.RUNNING} | {"rejected"})


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
    """Tracks runs of a remote coordinator from their public topics."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._runs: dict[str, _RunState] = {}

    async def track(self, run: RunId, *, since: float = 0.0) -> None:
        """Follow ``run``; ``since``: ignore the retained end of an earlier life of it (resumed runs)."""
        if run in self._runs:
            self._runs[run].since = max(self._runs[run].since, since)
            self._runs[run].status = None
            return
        self._runs[run] = _RunState(since=since)
        await self._transport.subscribe(topics.run_status(run), topics.run_events(run), topics.run_task_results(run))

    def on_message(self, topic: str, payload: bytes) -> None:
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
        except (ProtocolError, KeyError, ValueError, TypeError) as exc:
            log.warning("ignoring malformed message on %s: %s", topic, exc)
            return
        state.changed.set()

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


async def find_coordinator(transport: Transport, messages: AsyncIterator[Any], *, wait: float = 2.0) -> str:
    """The id of an online coordinator, from the retained coordinator statuses."""
    await transport.subscribe(topics.all_coordinator_status())
    found: str | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            async for msg in messages:
                if not msg.topic.endswith("/status") or "/coordinator/" not in msg.topic:
                    continue
                try:
                    doc = decode_public(msg.payload, schema=SCHEMA_COORDINATOR)
                except ProtocolError:
                    continue
                # in-process coordinators of other clients ("client-…") take no submissions
                if doc.get("online") and not str(doc.get("id", "")).startswith("client-"):
                    found = str(doc["id"])
                    break
    await transport.unsubscribe(topics.all_coordinator_status())
    if found is None:
        raise DagonError(
            "no dagon coordinator is online on this broker; start one with 'dagon coordinator --broker URL'"
        )
    return found
