"""Tier 1: resuming runs from stored states, re-attaching to agents, regenerating lost outputs."""

from __future__ import annotations

import random
from typing import Any

from dagon.core import (
    AgentAnnounced,
    AgentOffline,
    AgentSeen,
    Dispatch,
    Engine,
    RunState,
    RunSubmitted,
    Task,
    TaskFinished,
    TaskState,
    Tick,
    Workflow,
)
from dagon.core._recovery import StoredTask
from dagon.protocol import AgentId, OutputFile, ResultStatus, RunId, TaskName, TaskRef, TaskResult

from ._sim import caps, dispatches, finish, start

R = RunId("run-1")
A1, A2 = AgentId("a1"), AgentId("a2")


def chain() -> Workflow:
    wf = Workflow("chain")
    wf.shell("a", "mkdir out && echo a > out/f")
    wf.shell("b", "cat workflow:///a/out/f > b")
    wf.shell("c", "cat workflow:///b/b > c")
    wf.shell("d", "echo independent")
    return wf


def succeeded(agent: str, attempt: int = 1, host: str = "host-1", outputs: tuple[str, ...] = ()) -> StoredTask:
    doc: dict[str, Any] = {
        "host": host, "workdir": f"/scratch/x/{attempt}", "exit_code": 0, "duration": 1.5,
        "outputs": [{"path": p, "size": 3, "sha256": "0" * 64} for p in outputs],
    }  # fmt: skip
    return ("succeeded", attempt, agent, "exit code 0", doc)


def restored(wf: Workflow, tasks: dict[str, StoredTask], *, reopen: bool = False, now: float = 100.0) -> Engine:
    engine = Engine(rng=random.Random(1), heartbeat_ttl=10.0)
    engine.restore(R, wf, wf.graph(), tasks, now=now, reopen=reopen)
    return engine


def state_of(engine: Engine, task: str) -> TaskState:
    """The task's state now (read again: an event changes the view a test may hold)."""
    return engine.run(R).tasks[task].state


def announce(engine: Engine, agent: AgentId, now: float, host: str = "host-1", slots: int = 4) -> None:
    engine.handle(AgentAnnounced(agent, caps(slots=slots, host=host)), now)


def test_succeeded_tasks_are_kept_and_running_ones_reattached() -> None:
    engine = restored(chain(), {"a": succeeded("a1", outputs=("out/f",)), "b": ("running", 1, "a1", "started", None)})
    run = engine.run(R)
    assert run.tasks["a"].state is TaskState.SUCCEEDED
    assert run.tasks["b"].state is TaskState.RUNNING
    assert run.tasks["c"].state is TaskState.PENDING
    announce(engine, A1, 101)
    # Only the independent task is dispatched: a is never run again, b is in flight on a1.
    assert [d.assignment.task for d in dispatches(engine.schedule(101))] == ["d"]
    # The result of the attempt that ran across the restart is accepted.
    result = TaskResult(R, TaskName("b"), 1, ResultStatus.SUCCEEDED, 0, 100, 102, workdir="/s/b-1")
    engine.handle(TaskFinished(A1, result), 102)
    assert state_of(engine, "b") is TaskState.SUCCEEDED
    (c,) = [d for d in dispatches(engine.schedule(102)) if d.assignment.task == "c"]
    (staged,) = c.assignment.inputs
    assert (staged.task, staged.source_attempt) == ("b", 1)


def test_an_attempt_the_agent_does_not_hold_is_requeued() -> None:
    engine = restored(chain(), {"a": ("dispatched", 2, "a1", "placed on a1", None)})
    announce(engine, A1, 101)
    held = frozenset({TaskRef(R, TaskName("other"), 1)})
    engine.handle(AgentSeen(A1, held=1, refs=held), 102)
    view = engine.run(R).tasks["a"]
    assert view.state is TaskState.READY
    assert "does not hold" in view.cause
    again = [d for d in dispatches(engine.schedule(102)) if d.assignment.task == "a"]
    assert again[0].assignment.attempt == 3  # fenced: a late report of attempt 2 is ignored
    # An attempt it does hold stays.
    engine2 = restored(chain(), {"a": ("running", 2, "a1", "started", None)})
    announce(engine2, A1, 101)
    engine2.handle(AgentSeen(A1, held=1, refs=frozenset({TaskRef(R, TaskName("a"), 2)})), 102)
    assert engine2.run(R).tasks["a"].state is TaskState.RUNNING


def test_orphans_of_an_agent_that_never_comes_back_are_requeued_after_the_ttl() -> None:
    engine = restored(chain(), {"a": ("running", 1, "gone", "started", None)}, now=100)
    assert engine.next_deadline() == 110
    engine.handle(Tick(), 105)
    assert engine.run(R).tasks["a"].state is TaskState.RUNNING
    engine.handle(Tick(), 110.5)
    view = engine.run(R).tasks["a"]
    assert view.state is TaskState.READY
    assert "did not come back" in view.cause


def test_reopen_runs_failed_tasks_again_with_new_attempts() -> None:
    tasks = {
        "a": succeeded("a1", outputs=("out/f",)),
        "b": ("failed", 3, "a1", "exit code 1", None),
        "c": ("upstream_failed", 0, None, "upstream task 'b' failed", None),
        "d": succeeded("a1"),
    }
    kept = restored(chain(), tasks)
    assert kept.run(R).tasks["b"].state is TaskState.FAILED  # an automatic resume keeps the failure
    assert kept.run(R).tasks["c"].state is TaskState.UPSTREAM_FAILED
    assert kept.run(R).state is RunState.FAILED
    engine = restored(chain(), tasks, reopen=True)
    announce(engine, A1, 101)
    (b,) = dispatches(engine.schedule(101))
    assert (b.assignment.task, b.assignment.attempt) == ("b", 4)
    finish(engine, b, 102)
    (c,) = dispatches(engine.schedule(102))
    finish(engine, c, 103)
    assert engine.run(R).state is RunState.SUCCEEDED
    assert engine.run(R).tasks["a"].attempt == 1


def test_a_run_whose_tasks_had_all_ended_finishes_on_restore() -> None:
    engine = Engine(heartbeat_ttl=10.0)
    wf = chain()
    tasks = {n: succeeded("a1") for n in ("a", "b", "c", "d")}
    commands, summary = engine.restore(R, wf, wf.graph(), tasks, now=5.0)
    assert summary.succeeded == 4
    assert engine.run(R).state is RunState.SUCCEEDED
    assert [type(c).__name__ for c in commands] == ["RunTransition"]


def test_a_dynamic_map_is_expanded_again_and_its_finished_copies_kept() -> None:
    wf = Workflow("m")
    wf.shell("p", "touch x.txt y.txt")
    wf.add(Task(name="m", command="wc -l workflow:///p/*.txt", map_over="workflow:///p/*.txt"))
    tasks = {"p": succeeded("a1", outputs=("x.txt", "y.txt"))}
    probe = restored(wf, tasks)
    copies = sorted(n for n in probe.run(R).tasks if n.startswith("m"))
    assert len(copies) == 2
    tasks[copies[0]] = succeeded("a1")
    engine = restored(wf, tasks)
    states = {n: v.state for n, v in engine.run(R).tasks.items()}
    assert states[copies[0]] is TaskState.SUCCEEDED
    assert states[copies[1]] is TaskState.READY


def test_inputs_reported_lost_regenerate_their_producer() -> None:
    engine = Engine(rng=random.Random(1), heartbeat_ttl=10.0)
    announce(engine, A1, 0)
    wf = chain()
    engine.handle(RunSubmitted(R, wf, wf.graph()), 0)
    first = {str(d.assignment.task): d for d in dispatches(engine.schedule(0))}
    a1 = first["a"].assignment
    out = (OutputFile("out/f", 2, "0" * 64),)
    engine.handle(TaskFinished(A1, TaskResult(R, a1.task, 1, ResultStatus.SUCCEEDED, 0, 0, 1, outputs=out)), 1)
    (b,) = [d for d in dispatches(engine.schedule(1)) if d.assignment.task == "b"]
    start(engine, b, 2)
    lost = TaskResult(
        R, TaskName("b"), b.assignment.attempt, ResultStatus.ERROR, None, 2, 3,
        error="input workflow:///a/out/f is missing", lost_inputs=("a",),
    )  # fmt: skip
    engine.handle(TaskFinished(A1, lost), 3)
    run = engine.run(R)
    assert run.tasks["b"].state is TaskState.PENDING
    (a2,) = [d for d in dispatches(engine.schedule(3)) if d.assignment.task == "a"]
    assert a2.assignment.attempt == 2
    finish(engine, a2, 4)
    (b2,) = [d for d in dispatches(engine.schedule(4)) if d.assignment.task == "b"]
    assert b2.assignment.inputs[0].source_attempt == 2
    assert b2.assignment.attempt == 2


def test_outputs_lost_with_their_agent_are_regenerated_for_pending_consumers() -> None:
    engine = Engine(rng=random.Random(1), heartbeat_ttl=10.0)
    announce(engine, A1, 0, host="h1", slots=1)
    announce(engine, A2, 0, host="h2", slots=1)
    wf = Workflow("g")
    wf.shell("a", "echo a > f")
    wf.shell("slow", "sleep 100 > f")
    wf.shell("b", "cat workflow:///a/f workflow:///slow/f")
    engine.handle(RunSubmitted(R, wf, wf.graph()), 0)
    first = {str(d.assignment.task): d for d in dispatches(engine.schedule(0))}
    assert first["a"].agent != first["slow"].agent
    finish(engine, first["a"], 1)
    holder = first["a"].agent
    engine.handle(AgentOffline(holder, "connection lost"), 2)
    run = engine.run(R)
    assert run.tasks["a"].state is TaskState.READY  # its output lived only there
    assert f"lost with agent {holder}" in run.tasks["a"].cause
    assert engine.regenerated == 1
    # The consumer now waits for both the new attempt of a and slow.
    assert run.tasks["b"].state is TaskState.PENDING
    assert run.tasks["b"].waiting == 2


def one_long_task_with_grace() -> tuple[Engine, Dispatch]:
    """Two agents, a 30 s requeue grace, and one long task dispatched at t=0."""
    engine = Engine(rng=random.Random(1), heartbeat_ttl=10.0, requeue_grace=30.0)
    announce(engine, A1, 0)
    announce(engine, A2, 0)
    wf = Workflow("g")
    wf.shell("t", "sleep 60")
    engine.handle(RunSubmitted(R, wf, wf.graph()), 0)
    (d,) = dispatches(engine.schedule(0))
    return engine, d


def test_a_lost_agent_gets_a_grace_period_before_its_attempts_run_elsewhere() -> None:
    engine, d = one_long_task_with_grace()
    start(engine, d, 1)
    engine.handle(AgentOffline(d.agent, "connection lost"), 2)
    view = engine.run(R).tasks["t"]
    assert view.state is TaskState.RUNNING  # still its attempt: the agent may only be cut off
    assert not dispatches(engine.schedule(3))
    assert engine.orphans_due == 32.0
    # It comes back and delivers the result: used once, nothing ran twice.
    announce(engine, d.agent, 20)
    finish(engine, d, 21)
    assert state_of(engine, "t") is TaskState.SUCCEEDED and view.attempt == 1
    engine.handle(Tick(), 40)
    assert state_of(engine, "t") is TaskState.SUCCEEDED


def test_after_the_grace_period_the_attempt_runs_elsewhere() -> None:
    engine, d = one_long_task_with_grace()
    engine.handle(AgentOffline(d.agent, "connection lost"), 2)
    engine.handle(AgentSeen(A2 if d.agent == A1 else A1), 32)  # the other one is alive
    engine.handle(Tick(), 32.5)
    view = engine.run(R).tasks["t"]
    assert view.state is TaskState.READY
    assert "not back within 30 s" in view.cause
    (again,) = dispatches(engine.schedule(33))
    assert again.agent != d.agent and again.assignment.attempt == 2
    finish(engine, d, 34)  # the late result of the first attempt is fenced
    assert state_of(engine, "t") is TaskState.DISPATCHED


def test_an_agent_given_up_by_its_ttl_that_is_heard_from_again_is_back_online() -> None:
    engine = Engine(rng=random.Random(1), heartbeat_ttl=10.0)
    announce(engine, A1, 0)
    engine.handle(Tick(), 11)
    assert not engine.agents[A1].online
    engine.handle(AgentSeen(A1, held=0), 12)  # its heartbeats were only late
    assert engine.agents[A1].online
    engine.handle(AgentOffline(A1, "shutdown"), 13)
    engine.handle(AgentSeen(A1, held=0), 13.1)  # a heartbeat overtaken by the goodbye
    assert not engine.agents[A1].online


_LATE_COMMIT = """
import asyncio, sys
from dagon.core._store import RunStore
from dagon.core._writer import INLINE_MAX, StoreWriter

async def main():
    store = RunStore(sys.argv[1])
    w = StoreWriter(store)
    w.create_run("r", "w", {}, 0.0, {}, "c")
    for i in range(INLINE_MAX + 10):  # large: written in a worker thread
        w.transition(("r", f"t{i}", "ready", "dispatched", 1, "a", "placed", 1.0))
    first = asyncio.ensure_future(w.commit())
    await asyncio.sleep(0)
    while not w._writing.done():
        await asyncio.sleep(0)
    w.transition(("r", "late", "ready", "dispatched", 1, "a", "placed", 2.0))
    await w.commit()  # after the write finished, before its owner resumed
    await first
    await w.drain()
    print(len(store.transitions("r")))

asyncio.run(main())
"""


def test_a_commit_arriving_as_a_write_finishes_does_not_livelock(tmp_path: Any) -> None:
    """A second commit that found the previous write finished but not yet cleared used to spin
    without yielding, so the write's owner never ran: the coordinator hung at 100 % CPU."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _LATE_COMMIT, str(tmp_path / "runs.sqlite")],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["75"]
