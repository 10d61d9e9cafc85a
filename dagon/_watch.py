"""``dagon watch RUN``: a live terminal view of a run from the public MQTT topics.

Everything comes from the public JSON topics any MQTT client can read (run status, events,
task results, agent telemetry; docs/mqtt-topics.md), so it works against any coordinator.
:class:`WatchState` folds messages in; :func:`render` turns a state into lines (pure, so
it is tested without a terminal). :func:`watch` redraws in place with ANSI escapes when
the output is a terminal and prints plain lines otherwise.

Telemetry and events are not retained: a watcher started mid-run knows the run's counts
(retained status) at once, but running tasks and agents only from their next event or
telemetry sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

from dagon._report import power_source
from dagon.protocol import (
    SCHEMA_EVENTS,
    SCHEMA_RUN_STATUS,
    SCHEMA_TASK_RESULT,
    SCHEMA_TELEMETRY,
    decode_public,
    topics,
)

__all__ = ["TaskLine", "WatchState", "render", "watch"]

RUN_DONE: Final = frozenset({"succeeded", "failed", "cancelled", "rejected"})
STATE_ORDER: Final = (
    "pending", "ready", "dispatched", "running", "retry_wait", "succeeded", "failed", "cancelled", "upstream_failed",
)  # fmt: skip
# How far into an attempt a state is: within one attempt, news never moves a task back.
_RANK: Final = {
    "pending": 0, "ready": 1, "dispatched": 2, "running": 3, "retry_wait": 4,
    "succeeded": 5, "failed": 5, "cancelled": 5, "upstream_failed": 5,
}  # fmt: skip
REDRAW_INTERVAL: Final = 0.5  # seconds between redraws on a terminal
MAX_RUNNING_LINES: Final = 20
SETTLE_QUIET: Final = 0.3  # after the run ends: seconds without a message before the final view
SETTLE_LIMIT: Final = 2.0  # … and at most this long


@dataclass(slots=True)
class TaskLine:
    state: str
    attempt: int
    agent: str | None
    since: float  # when it entered ``state`` (coordinator clock)


@dataclass(slots=True)
class WatchState:
    """What a watcher knows about one run (folded from public messages)."""

    run: str
    status: dict[str, Any] | None = None
    tasks: dict[str, TaskLine] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)  # agent id → last telemetry
    notes: list[str] = field(default_factory=list)  # plain-text updates not printed yet

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status.get("state") in RUN_DONE

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status.get("state") == "succeeded"

    def apply(self, topic: str, payload: bytes) -> bool:
        """Fold one message in; ``False`` when it is not for this view (or unreadable)."""
        levels = topic.split("/")
        if not payload or len(levels) < 5:
            return False
        try:
            if levels[2] == "agents" and levels[-1] == "json":
                doc = decode_public(payload, schema=SCHEMA_TELEMETRY)
                self.agents[str(doc.get("agent") or topics.unescape_level(levels[3]))] = doc
                return True
            if levels[2] != "runs" or topics.unescape_level(levels[3]) != self.run:
                return False
            if levels[4] == "status":
                self._status(decode_public(payload, schema=SCHEMA_RUN_STATUS))
            elif levels[4] == "events":
                for event in decode_public(payload, schema=SCHEMA_EVENTS).get("events", []):
                    self._event(event)
            elif levels[4] == "tasks" and len(levels) >= 7:
                self._result(decode_public(payload, schema=SCHEMA_TASK_RESULT))
            else:
                return False
        except Exception:  # anyone may publish there: one bad document must not end the watch
            return False
        return True

    def _status(self, doc: dict[str, Any]) -> None:
        old = self.status.get("state") if self.status else None
        self.status = doc
        if doc.get("state") != old:
            cause = f" — {doc['cause']}" if doc.get("cause") else ""
            self.notes.append(f"run {self.run}: {doc.get('state')}{cause}")

    def _event(self, event: dict[str, Any]) -> None:
        task = event.get("task")
        if event.get("type") != "task" or not isinstance(task, str):
            return
        state = str(event["state"])
        line = self.tasks.get(task)
        attempt = int(event.get("attempt") or 0)
        if line is not None and (
            line.attempt > attempt or (line.attempt == attempt and _RANK.get(state, 0) <= _RANK.get(line.state, 0))
        ):
            # Older news: an earlier attempt, a progress note (no state change), or an event that
            # arrives after the attempt's result (results and events are separate topics).
            return
        self.tasks[task] = TaskLine(state, attempt, event.get("agent"), float(event.get("at") or 0.0))
        self._note(task, state, event.get("agent"), str(event.get("cause") or ""))

    def _note(self, task: str, state: str, agent: str | None, cause: str) -> None:
        where = f" on {agent}" if agent else ""
        # The coordinator's cause often names the agent already ("exit code 0 on fog-1; pulled …"):
        # say it once, where this line always says it.
        cause = cause.replace(where, "", 1) if where else cause
        why = f": {cause}" if cause and state not in ("dispatched", "running") else ""
        self.notes.append(f"{task} {state}{where}{why}"[:200])

    def _result(self, doc: dict[str, Any]) -> None:
        # Results and events travel on different topics: whichever comes first tells.
        task = str(doc["task"])
        line = self.tasks.get(task)
        attempt = int(doc.get("attempt") or 0)
        state = str(doc["state"])
        if (
            line is None
            or line.attempt < attempt
            or (line.attempt == attempt and _RANK.get(state, 5) > _RANK.get(line.state, 0))
        ):
            self.tasks[task] = TaskLine(state, attempt, doc.get("agent"), 0.0)
            self._note(task, state, doc.get("agent"), str(doc.get("cause") or ""))

    def counts(self) -> dict[str, int]:
        """Tasks per state: the run status's counts (authoritative), else what events told."""
        if self.status is not None and isinstance(self.status.get("counts"), dict):
            return {str(k): int(v) for k, v in self.status["counts"].items()}
        counts: dict[str, int] = {}
        for line in self.tasks.values():
            counts[line.state] = counts.get(line.state, 0) + 1
        return counts

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes


# Names and causes come from the broker: control characters (an ESC starts a terminal
# command) are shown as '?' rather than sent to the user's terminal.
_CONTROLS: Final = dict.fromkeys([*range(32), 127, *range(128, 160)], "?")


def _printable(text: str) -> str:
    return text.translate(_CONTROLS)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _elapsed(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def render(state: WatchState, now: float, *, width: int = 100) -> list[str]:
    """The view as plain lines (no colour, each at most ``width`` characters)."""
    status = state.status or {}
    head = f"run {state.run}"
    if status.get("workflow"):
        head += f" ({status['workflow']})"
    head += f": {status.get('state', 'waiting for the run status…')}"
    if status.get("submitted_at"):
        end = status.get("finished_at") or now
        head += f"  {_elapsed(end - float(status['submitted_at']))}"
    lines = [head]
    if status.get("cause") and state.finished:
        lines.append(f"  {status['cause']}")
    counts = state.counts()
    total = status.get("tasks") or sum(counts.values())
    ordered = [s for s in STATE_ORDER if counts.get(s)] + sorted(s for s in counts if s not in STATE_ORDER)
    lines.append(f"tasks: {total}  {'  '.join(f'{s} {counts[s]}' for s in ordered)}".rstrip())
    running = sorted(
        ((name, t) for name, t in state.tasks.items() if t.state in ("running", "dispatched")),
        key=lambda item: (item[1].since, item[0]),
    )
    if running:
        lines.append("running:")
        for name, t in running[:MAX_RUNNING_LINES]:
            attempt = f" (attempt {t.attempt})" if t.attempt > 1 else ""
            verb = "" if t.state == "running" else " [dispatched]"
            lines.append(f"  {name}{attempt} on {t.agent or '?'}{verb}  {_elapsed(now - t.since) if t.since else ''}")
        if len(running) > MAX_RUNNING_LINES:
            lines.append(f"  … and {len(running) - MAX_RUNNING_LINES} more")
    if state.agents:
        lines.append("agents:")
        busy: dict[str, int] = {}
        for t in state.tasks.values():
            if t.state == "running" and t.agent:
                busy[t.agent] = busy.get(t.agent, 0) + 1
        for agent in sorted(state.agents):
            doc = state.agents[agent]
            power = doc.get("power")
            watts = "power n/a"
            if isinstance(power, dict) and power.get("watts") is not None:
                how = power_source(str(power.get("source") or ""), bool(power.get("measured")))
                watts = f"{float(power['watts']):.1f} W ({how})"
            mem = f"mem {_size(float(doc.get('memory_used', 0)))}/{_size(float(doc.get('memory_total', 0)))}"
            age = now - float(doc.get("ts") or now)
            stale = f"  (seen {_elapsed(age)} ago)" if age > 30 else ""
            lines.append(
                f"  {agent}: cpu {float(doc.get('cpu_percent', 0.0)):.0f}%  {mem}  {watts}"
                f"  tasks {busy.get(agent, 0)}{stale}"
            )
    return [_printable(line)[:width] for line in lines]


async def watch(
    messages: AsyncIterator[tuple[str, bytes]],
    state: WatchState,
    out: IO[str],
    *,
    tty: bool,
    width: int = 100,
    clock: Any = time.time,
    first_status_timeout: float = 10.0,
) -> int:
    """Show ``state`` as ``messages`` (topic, payload) arrive; return when the run ends.

    Returns 0 when the run succeeded, 1 when it failed or was cancelled or rejected.

    Raises:
        TimeoutError: no status of the run arrived within ``first_status_timeout`` s.
    """
    drawn = 0
    last_draw = 0.0

    def draw(final: bool = False) -> None:
        nonlocal drawn, last_draw
        if tty:
            lines = render(state, clock(), width=width)
            # Cursor to the start of our previous block, clear to the end of the screen.
            prefix = f"\x1b[{drawn}F\x1b[J" if drawn else ""
            out.write(prefix + "\n".join(lines) + "\n")
            drawn = len(lines)
        else:
            for note in state.take_notes():
                out.write(f"{time.strftime('%H:%M:%S', time.localtime(clock()))} {_printable(note)}\n")
            if final:
                out.write("\n".join(render(state, clock(), width=width)) + "\n")
        out.flush()
        last_draw = time.monotonic()

    # A reader task feeds a queue: waiting on the queue can time out (to redraw) without
    # cancelling the message iterator itself.
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in messages:
                queue.put_nowait(item)
        finally:
            queue.put_nowait(None)

    async def next_message(wait: float | None) -> tuple[str, bytes] | None:
        async with asyncio.timeout(wait):
            return await queue.get()

    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(pump(), name="dagon-watch-reader")
        try:
            deadline = time.monotonic() + first_status_timeout
            ended = gave_up = False
            while not state.finished:
                wait = REDRAW_INTERVAL if tty else None
                if state.status is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        gave_up = True  # raised outside the task group (not as an ExceptionGroup)
                        break
                    wait = min(wait or remaining, remaining)
                try:
                    item = await next_message(wait)
                except TimeoutError:
                    if tty and state.status is not None:
                        draw()
                    continue
                if item is None:
                    ended = True
                    break
                changed = state.apply(*item)
                if changed and not state.finished and (not tty or time.monotonic() - last_draw >= REDRAW_INTERVAL):
                    draw()
            # The final status may overtake the last events and results (separate topics): take
            # what follows until the line is quiet, so the final view and updates are complete.
            settle_until = time.monotonic() + SETTLE_LIMIT
            while not (ended or gave_up) and (left := settle_until - time.monotonic()) > 0:
                try:
                    item = await next_message(min(SETTLE_QUIET, left))
                except TimeoutError:
                    break
                if item is None:
                    break
                state.apply(*item)
        finally:
            reader.cancel()
    if gave_up:
        raise TimeoutError(f"no status of run {state.run!r} within {first_status_timeout:g} s")
    with contextlib.suppress(Exception):
        draw(final=True)
    return 0 if state.ok else 1
