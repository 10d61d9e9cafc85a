"""The coordinator's drive loop: engine commands become batched messages to agents.

Edge-triggered: the loop sleeps until woken (an event was fed to the engine) or
until the engine's next deadline, then runs once per wake-up however many events
arrived meanwhile — fire timers, schedule ready tasks, execute the commands.

Executing is write-ahead: the run store commits the transitions first, then
assignments (with the grants of their inputs), cancellations, scratch
deletions, upload requests, grant revocations and result acknowledgements go out, at most
:data:`MAX_BATCH` items per message. Acknowledgements ride along with the
assignments to the same agent where there are some.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Final

from dagon.core._answers import Answers
from dagon.core._datasources import DataSources
from dagon.core._engine import Engine
from dagon.core._events import (
    AgentChanged,
    AgentSeen,
    CancelAttempt,
    Command,
    DeleteScratch,
    Dispatch,
    Event,
    RunTransition,
    TaskRejected,
    TaskTransition,
    TaskWaiting,
    Tick,
)
from dagon.core._feed import RunFeed
from dagon.core._listeners import notify
from dagon.core._losses import say_losses
from dagon.core._retention import Retention, leave_memory
from dagon.core._states import RunState, TaskState
from dagon.protocol import (
    AgentId,
    AssignTasks,
    CancelTasks,
    DeleteData,
    ProtocolError,
    Rejection,
    ResultsStored,
    TaskAssignment,
    TaskRef,
)
from dagon.protocol.transport import Channel

__all__ = ["MAX_BATCH", "Dispatcher"]

log = logging.getLogger(__name__)

MAX_BATCH: Final = 2000  # items (assignments, references) per message
_ACTIVE: Final = frozenset({TaskState.DISPATCHED, TaskState.RUNNING})  # states with an attempt under way


class Dispatcher:
    """Feeds the engine, runs the drive loop and sends what it decides.

    Args:
        engine: the engine to drive.
        channel: to the agents.
        feed: hears of every transition (store, public output, watchers).
        data: grants for assignments, checkpoint uploads, relay expiry.
        reply_to: the coordinator id agents report to.
        agents_changed: called when an agent came or went.
        retention: which finished runs leave memory (and their results the broker) when, after
            the pass that published their final status and stored their last rows (None: kept).
        answers: answers to clients, sent once the store commit behind them is done.
    """

    def __init__(
        self,
        engine: Engine,
        channel: Channel,
        feed: RunFeed,
        data: DataSources,
        *,
        reply_to: str,
        agents_changed: Callable[[], None],
        retention: Retention | None = None,
        answers: Answers | None = None,
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._feed = feed
        self._data = data
        self._reply_to = reply_to
        self._agents_changed = agents_changed
        self.retention = retention
        if retention is not None:
            feed.output.result_expiry = retention.result_expiry
        self.answers = answers
        self.wake = asyncio.Event()
        self.pending: list[Command] = []
        # agent -> results received whose acknowledgement (ResultsStored) goes out once they are persisted
        self._stored: defaultdict[AgentId, list[TaskRef]] = defaultdict(list)

    # -- input ------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> bool:
        """Give ``event`` to the engine; its commands run with the next pass (see :meth:`poke`).

        Returns whether a pass has anything to do: not for the heartbeat of an agent with nothing to
        reconcile while no task is ready (an idle fleet's heartbeats wake no pass: issue 21)."""
        commands = self._engine.handle(event, now)
        self.pending.extend(commands)
        return bool(commands) or not isinstance(event, AgentSeen) or self._engine.ready_count > 0

    def feed(self, event: Event) -> None:
        """Give ``event`` to the engine now and wake the loop."""
        self.handle(event, time.time())
        self.wake.set()

    def queue(self, commands: Iterable[Command]) -> None:
        """Commands worked out elsewhere (restoring a run) for the next pass."""
        self.pending.extend(commands)
        self.wake.set()

    def acknowledge(self, agent: AgentId, refs: Iterable[TaskRef]) -> None:
        """Results of ``agent`` to acknowledge once the store has them (next pass)."""
        self._stored[agent].extend(refs)

    def acknowledge_stale(self, agent: AgentId, held: tuple[TaskRef, ...]) -> None:
        """Results an agent still holds for attempts of ours that are over (superseded, or the
        task ended): acknowledge them so its spool lets go (they may be addressed to a
        coordinator that is gone, e.g. the one of an interrupted ``dagon run``)."""
        runs = self._engine.runs
        for ref in held:
            view = runs[ref.run].tasks.get(ref.task) if ref.run in runs else None
            if view is not None and (view.attempt != ref.attempt or view.agent != agent):
                self._stored[agent].append(ref)
        if self._stored.get(agent):
            self.wake.set()

    # -- the loop ---------------------------------------------------------------

    async def drive_loop(self) -> None:
        engine = self._engine
        while True:
            deadline = engine.next_deadline(time.time())
            retention = self.retention
            leaving = retention.next_due() if retention is not None else None
            wake_at = deadline if leaving is None or (deadline is not None and deadline < leaving) else leaving
            if not self.wake.is_set():
                timeout = None if wake_at is None else max(0.0, wake_at - time.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self.wake.wait()
            self.wake.clear()
            now = time.time()
            commands, self.pending = self.pending, []
            if deadline is not None and deadline <= now:
                commands.extend(engine.handle(Tick(), now))
            commands.extend(engine.schedule(now))
            answering = self.answers is not None and self.answers.pending
            if commands or self._data.uploads_waiting or self._stored or answering:
                say_losses(commands)  # lost agents and what runs again: WARNING (core/_losses.py)
                await self._execute(commands, now)
            else:  # state changed without commands (a result, a throttled status): public status too
                feed = self._feed
                if feed.writer is not None:
                    await feed.writer.commit()  # write-ahead, as in _execute
                feed.output.flush(engine.runs, now)
            self._leave_memory(now)

    def _leave_memory(self, now: float) -> None:
        """Finished runs that are due leave memory (after this pass stored and published their end)."""
        if self.retention is None:
            return
        for run in self.retention.due(now):
            leave_memory(self._engine, self._feed.output, run)

    async def _execute(self, commands: list[Command], now: float) -> None:
        feed, data = self._feed, self._data
        assign: dict[AgentId, list[TaskAssignment]] = defaultdict(list)
        cancel: dict[AgentId, list[TaskRef]] = defaultdict(list)
        delete: dict[AgentId, list[TaskRef]] = defaultdict(list)
        for cmd in commands:
            match cmd:
                case TaskTransition():
                    feed.task_changed(cmd)
                    if cmd.new is TaskState.SUCCEEDED and cmd.view is not None:
                        data.task_succeeded(cmd.view)
                    if cmd.old in _ACTIVE and cmd.new is not TaskState.RUNNING:
                        data.attempt_ended(cmd.run, cmd.task)  # its data grants expire with it
                case Dispatch():
                    assign[cmd.agent].append(data.with_grants(cmd.agent, cmd.assignment))
                case CancelAttempt():
                    cancel[cmd.agent].append(cmd.ref)
                case RunTransition():
                    feed.run_changed(cmd)
                    if cmd.new is not RunState.RUNNING:
                        data.run_ended(cmd.run, cmd.at)
                        if self.retention is not None and cmd.run in self._engine.runs:
                            self.retention.ended(cmd.run, now, len(self._engine.runs[cmd.run].tasks))
                    elif self.retention is not None:
                        self.retention.reopened(cmd.run)
                case AgentChanged():
                    log.info("agent %s %s (%s)", cmd.agent, "online" if cmd.online else "offline", cmd.reason)
                    feed.output.board.changed(cmd.agent, cmd.online, cmd.reason)
                    data.agents_changed()
                    if cmd.online:
                        data.agent_online(cmd.agent)
                    self._agents_changed()
                    if feed.listeners:
                        notify(feed.listeners, "agent_changed", cmd)
                case DeleteScratch():
                    delete[cmd.agent].append(cmd.ref)
                case TaskWaiting():
                    feed.waiting(cmd)
        stored, self._stored = self._stored, defaultdict(list)
        if feed.writer is not None:
            # Write-ahead: nothing below leaves before the decisions behind it are in the store.
            await feed.writer.commit()
        feed.output.flush(self._engine.runs, now)
        if self.answers is not None:
            await self.answers.send()  # after the commit: an accepted run is in the store
        channel = self._channel
        for agent, batch in assign.items():
            waiting = stored.pop(agent, [])  # acknowledgements ride along (see AssignTasks)
            acks = tuple(waiting[:MAX_BATCH])
            if waiting[MAX_BATCH:]:
                stored[agent] = waiting[MAX_BATCH:]
            for i in range(0, len(batch), MAX_BATCH):
                for payload in self._encode_assignments(agent, batch[i : i + MAX_BATCH], acks):
                    await channel.to_agent(agent, payload)
                acks = ()
        for agent, refs in cancel.items():
            await channel.to_agent(agent, CancelTasks(tasks=tuple(refs), reason="run cancelled"))
        for agent, refs in delete.items():
            for i in range(0, len(refs), MAX_BATCH):
                await channel.to_agent(agent, DeleteData(tasks=tuple(refs[i : i + MAX_BATCH])))
        for agent, upload in data.take_uploads():
            await channel.to_agent(agent, upload)
        for agent, revoke in data.take_revocations():
            await channel.to_agent(agent, revoke)
        for agent, refs in stored.items():
            for i in range(0, len(refs), MAX_BATCH):
                await channel.to_agent(agent, ResultsStored(tasks=tuple(refs[i : i + MAX_BATCH])))

    def _encode_assignments(
        self, agent: AgentId, batch: list[TaskAssignment], acks: tuple[TaskRef, ...] = ()
    ) -> list[bytes]:
        """Encoded assignment messages; a task that cannot be encoded (e.g. over the
        message size limit) fails with the reason instead of stalling the others."""
        channel = self._channel
        try:
            return [channel.encode(AssignTasks(reply_to=self._reply_to, tasks=tuple(batch), stored=acks), agent=agent)]
        except ProtocolError:
            pass
        payloads = []
        if acks:
            payloads.append(channel.encode(ResultsStored(tasks=acks), agent=agent))
        for assignment in batch:
            try:
                payloads.append(channel.encode(AssignTasks(reply_to=self._reply_to, tasks=(assignment,)), agent=agent))
            except ProtocolError as exc:
                log.error("task %s of run %s cannot be sent: %s", assignment.task, assignment.run, exc)
                rejection = Rejection(task=assignment.ref, reason=f"cannot be sent: {exc}", permanent=True)
                self.pending.extend(self._engine.handle(TaskRejected(agent, rejection), time.time()))
                self.wake.set()
        return payloads
