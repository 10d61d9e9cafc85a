"""``dagon watch``'s state folding and rendering (pure functions, no broker)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dagon._watch import WatchState, render, watch
from dagon.protocol import encode_public, topics

RUN = "demo-1"


def status(state: str, counts: dict[str, int], **extra: Any) -> tuple[str, bytes]:
    doc = {
        "schema": "dagon.run-status/1", "run": RUN, "workflow": "demo", "coordinator": "main", "state": state,
        "cause": extra.pop("cause", ""), "tasks": sum(counts.values()), "counts": counts,
        "submitted_at": 100.0, "finished_at": extra.pop("finished_at", None), **extra,
    }  # fmt: skip
    return topics.run_status(RUN), encode_public(doc)


def events(*items: tuple[str, str, str, int, str | None, float], cause: str = "") -> tuple[str, bytes]:
    docs = [
        {"type": "task", "task": t, "state": new, "old": old, "attempt": n, "agent": a, "cause": cause, "at": at}
        for t, old, new, n, a, at in items
    ]
    return topics.run_events(RUN), encode_public({"schema": "dagon.events/1", "run": RUN, "events": docs})


def telemetry(agent: str, cpu: float, watts: float | None, ts: float = 110.0) -> tuple[str, bytes]:
    power = None if watts is None else {
        "watts": watts, "source": "rapl", "measured": True, "detail": {}, "energy_joules_total": 1.0,
    }  # fmt: skip
    doc = {
        "schema": "dagon.telemetry/1", "agent": agent, "ts": ts, "cpu_percent": cpu, "cpu_busy_cores": 0.5,
        "per_core_percent": [cpu], "memory_used": 512 * 2**20, "memory_total": 2 * 2**30, "agent_cpu_percent": 0.1,
        "agent_rss": 1, "temperatures": {}, "power": power,
    }  # fmt: skip
    return topics.agent_telemetry_json(agent), encode_public(doc)


def result(task: str, state: str, attempt: int, agent: str) -> tuple[str, bytes]:
    doc = {"schema": "dagon.task-result/1", "run": RUN, "task": task, "state": state, "attempt": attempt,
           "agent": agent, "cause": "exit code 0"}  # fmt: skip
    return topics.run_task_result(RUN, task), encode_public(doc)


def test_render_shows_counts_running_tasks_and_agents() -> None:
    s = WatchState(RUN)
    assert s.apply(*status("running", {"succeeded": 1, "running": 2, "pending": 3}))
    assert s.apply(
        *events(("a", "dispatched", "running", 1, "pi-1", 104.0), ("b", "dispatched", "running", 2, "pc", 107.5))
    )
    assert s.apply(*telemetry("pi-1", 37.4, 6.25))
    assert s.apply(*telemetry("pc", 5.0, None))
    assert not s.apply(topics.run_status("other-run"), status("failed", {})[1])
    assert not s.apply(topics.run_events(RUN), b"\xff not json")
    lines = render(s, now=110.0)
    assert lines[0] == "run demo-1 (demo): running  10.0s"
    assert lines[1] == "tasks: 6  pending 3  running 2  succeeded 1"
    assert lines[2:5] == ["running:", "  a on pi-1  6.0s", "  b (attempt 2) on pc  2.5s"]
    assert lines[5] == "agents:"
    assert lines[6] == "  pc: cpu 5%  mem 512.0 MiB/2.0 GiB  power n/a  tasks 1"
    assert lines[7] == "  pi-1: cpu 37%  mem 512.0 MiB/2.0 GiB  6.2 W (rapl, measured)  tasks 1"
    assert all(len(line) <= 30 for line in render(s, now=110.0, width=30))


def test_state_follows_attempts_and_ignores_stale_news() -> None:
    s = WatchState(RUN)
    s.apply(*events(("a", "running", "retry_wait", 1, "pi-1", 101.0), cause="exit code 1"))
    s.apply(*events(("a", "dispatched", "running", 2, "pc", 103.0)))
    s.apply(*result("a", "failed", 1, "pi-1"))  # an old attempt's result cannot win
    assert (s.tasks["a"].state, s.tasks["a"].attempt) == ("running", 2)
    s.apply(*result("a", "succeeded", 2, "pc"))
    s.apply(*events(("a", "running", "succeeded", 2, "pc", 104.0), cause="exit code 0"))  # same news again
    assert s.take_notes() == ["a retry_wait on pi-1: exit code 1", "a running on pc", "a succeeded on pc: exit code 0"]
    assert s.counts() == {"succeeded": 1}  # no status yet: counted from what was seen
    s.apply(*status("succeeded", {"succeeded": 1}, finished_at=104.5, cause="all 1 tasks succeeded"))
    assert s.finished and s.ok
    assert render(s, now=200.0)[:2] == ["run demo-1 (demo): succeeded  4.5s", "  all 1 tasks succeeded"]


async def feed(messages: list[tuple[str, bytes]], delay: float = 0.0) -> AsyncIterator[tuple[str, bytes]]:
    for m in messages:
        await asyncio.sleep(delay)
        yield m


@pytest.mark.parametrize(("final", "code"), [("succeeded", 0), ("failed", 1), ("cancelled", 1)])
async def test_watch_plain_output_and_exit_code(final: str, code: int) -> None:
    out = io.StringIO()
    msgs = [
        status("running", {"running": 1}),
        events(("a", "dispatched", "running", 1, "pi-1", 101.0)),
        status(final, {"succeeded" if final == "succeeded" else "failed": 1}, finished_at=102.0),
        events(("a", "running", final, 1, "pi-1", 102.0), cause="done"),  # after the final status
    ]
    assert await watch(feed(msgs), WatchState(RUN), out, tty=False, clock=lambda: 103.0) == code
    text = out.getvalue()
    assert "\x1b" not in text
    assert f"a {final} on pi-1: done" in text  # taken although it came after the final status
    assert f"run demo-1 (demo): {final}  2.0s" in text.splitlines()


async def test_watch_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    msgs = [status("running", {"running": 1}), telemetry("pi-1", 50.0, 3.0), status("succeeded", {"succeeded": 1})]
    assert await watch(feed(msgs, delay=0.6), WatchState(RUN), out, tty=True, clock=lambda: 103.0) == 0
    text = out.getvalue()
    assert text.startswith("run demo-1 (demo): running")
    assert text.count("\x1b[J") >= 2 and "\x1b[2F\x1b[J" in text  # back over the 2-line view, clear, redraw
    assert text.rsplit("\x1b[J", 1)[1].startswith("run demo-1 (demo): succeeded")


async def test_watch_gives_up_without_a_status() -> None:
    with pytest.raises(TimeoutError, match=r"no status of run .demo-1. within 0\.2 s"):
        await watch(feed([telemetry("x", 1.0, None)], delay=5), WatchState(RUN), io.StringIO(), tty=False,
                    first_status_timeout=0.2)  # fmt: skip


async def test_watch_of_a_rejected_run_shows_why_and_fails() -> None:
    doc = {"schema": "dagon.run-status/1", "run": RUN, "state": "rejected", "cause": "task 'a' reads unknown task 'x'"}
    out = io.StringIO()
    assert await watch(feed([(topics.run_status(RUN), encode_public(doc))]), WatchState(RUN), out, tty=False) == 1
    assert out.getvalue().splitlines()[-3:] == [
        "run demo-1: rejected",
        "  task 'a' reads unknown task 'x'",
        "tasks: 0",
    ]


def test_names_from_the_broker_cannot_drive_the_terminal() -> None:
    s = WatchState(RUN)
    s.apply(*status("running", {"running": 1}))
    s.apply(*events(("evil\x1b[2J\x1b]0;owned\x07", "dispatched", "running", 1, "pi\r\n-1", 101.0)))
    lines = render(s, now=102.0)
    assert lines[3] == "  evil?[2J?]0;owned? on pi??-1  1.0s"
    assert not any(ch in "".join(lines) for ch in "\x1b\x07\r\n")


def test_an_event_that_arrives_after_the_result_does_not_move_the_task_back() -> None:
    s = WatchState(RUN)
    s.apply(*status("running", {"succeeded": 1}))
    s.apply(*result("a", "succeeded", 1, "pi-1"))
    s.apply(*events(("a", "dispatched", "running", 1, "pi-1", 101.0), ("a", "running", "succeeded", 1, "pi-1", 102.0)))
    assert s.tasks["a"].state == "succeeded"
    assert "running:" not in render(s, now=103.0)
    assert s.take_notes() == ["run demo-1: running", "a succeeded on pi-1: exit code 0"]
