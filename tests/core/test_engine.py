"""Tier 1: the sans-IO engine, driven directly (no event loop)."""

from __future__ import annotations

import random

import pytest

from dagon.core import (
    AgentAnnounced,
    AgentOffline,
    AgentSeen,
    CancelAttempt,
    Engine,
    IllegalTransition,
    Retry,
    RunCancelRequested,
    RunState,
    RunSubmitted,
    TaskRejected,
    TaskState,
    TaskTransition,
    Tick,
    Workflow,
)
from dagon.protocol import AgentId, Rejection, ResultStatus, RunId

from ._sim import caps, dispatches, finish, start

R = RunId("run-1")


def demo() -> Workflow:
    wf = Workflow("demo")
    wf.shell("A", "mkdir out && echo a > out/f1.txt")
    wf.shell("B", "cat workflow:///A/out/f1.txt > b")
    wf.shell("C", "cat workflow:///A/out/f1.txt > c")
    wf.shell("D", "cat workflow:///B/b workflow:///C/c > d")
    wf.shell("E", "cat workflow:///D/d")
    return wf


def engine_with(*agents: tuple[str, int], seed: int = 1, **kwargs: object) -> Engine:
    engine = Engine(rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]
    for name, slots in agents:
        engine.handle(AgentAnnounced(AgentId(name), caps(slots=slots)), 0.0)
    return engine


def submit(engine: Engine, wf: Workflow, now: float = 0.0) -> None:
    engine.handle(RunSubmitted(R, wf, wf.graph()), now)


def test_demo_runs_in_dependency_order() -> None:
    engine = engine_with(("a1", 4))
    submit(engine, demo())
    order: list[list[str]] = []
    now = 0.0
    while batch := dispatches(engine.schedule(now)):
        order.append(sorted(d.assignment.task for d in batch))
        for d in batch:
            now += 1
            finish(engine, d, now)
    assert order == [["A"], ["B", "C"], ["D"], ["E"]]
    assert engine.run(R).state is RunState.SUCCEEDED


def test_dispatch_carries_staging_of_producer() -> None:
    engine = engine_with(("a1", 4))
    submit(engine, demo())
    (a,) = dispatches(engine.schedule(0))
    finish(engine, a, 1)
    b = next(d for d in dispatches(engine.schedule(1)) if d.assignment.task == "B")
    (inp,) = b.assignment.inputs
    assert inp.ref == "workflow:///A/out/f1.txt"
    assert inp.task == "A"
    assert inp.path == "out/f1.txt"
    assert inp.source_agent == "a1"
    assert inp.source_host == "host-1"
    assert inp.source_dir == f"/scratch/{R}/A-1"
    assert inp.workflow == "demo"


def test_failure_propagates_but_independent_branch_finishes() -> None:
    wf = Workflow("f")
    wf.shell("bad", "exit 1")
    wf.shell("child", "true", after=["bad"])
    wf.shell("grandchild", "true", after=["child"])
    wf.shell("free", "true")
    engine = engine_with(("a1", 4))
    submit(engine, wf)
    for d in dispatches(engine.schedule(0)):
        if d.assignment.task == "bad":
            finish(engine, d, 1, ResultStatus.FAILED, 1)
        else:
            finish(engine, d, 1)
    run = engine.run(R)
    assert run.tasks["bad"].state is TaskState.FAILED
    assert run.tasks["child"].state is TaskState.UPSTREAM_FAILED
    assert run.tasks["grandchild"].state is TaskState.UPSTREAM_FAILED
    assert run.tasks["free"].state is TaskState.SUCCEEDED
    assert run.state is RunState.FAILED
    assert "bad" in run.cause


def test_retries_back_off_with_jitter_and_cap() -> None:
    wf = Workflow("r")
    wf.shell("flaky", "x", retry=Retry(attempts=3, backoff=2.0, max_backoff=5.0))
    engine = engine_with(("a1", 1))
    submit(engine, wf)
    now = 0.0
    delays = []
    for attempt in (1, 2, 3):
        (d,) = dispatches(engine.schedule(now))
        assert d.assignment.attempt == attempt
        finish(engine, d, now, ResultStatus.FAILED, 1)
        view = engine.run(R).tasks["flaky"]
        assert view.state is TaskState.RETRY_WAIT
        deadline = engine.next_deadline()
        assert deadline is not None
        delays.append(deadline - now)
        assert dispatches(engine.schedule(deadline - 0.001)) == []  # not before the backoff
        engine.handle(Tick(), deadline)
        now = deadline
    base = [2.0, 4.0, 5.0]  # 2 * 2**(n-1), capped at 5
    for delay, full in zip(delays, base, strict=True):
        assert 0.5 * full <= delay <= full
    (d,) = dispatches(engine.schedule(now))
    finish(engine, d, now)
    assert engine.run(R).state is RunState.SUCCEEDED
    assert engine.run(R).tasks["flaky"].attempt == 4


def test_retries_exhausted_fail_the_task() -> None:
    wf = Workflow("r")
    wf.shell("t", "x", retry=Retry(attempts=1, backoff=0.0))
    engine = engine_with(("a1", 1))
    submit(engine, wf)
    (d,) = dispatches(engine.schedule(0))
    finish(engine, d, 0, ResultStatus.TIMEOUT, None)
    engine.handle(Tick(), 0.0)
    (d,) = dispatches(engine.schedule(0))
    finish(engine, d, 0, ResultStatus.ERROR, None)
    view = engine.run(R).tasks["t"]
    assert view.state is TaskState.FAILED
    assert "could not run" in view.cause


def test_stale_result_of_superseded_attempt_is_ignored() -> None:
    wf = Workflow("s")
    wf.shell("t", "x", retry=Retry(attempts=1, backoff=0.0))
    engine = engine_with(("a1", 2))
    submit(engine, wf)
    (first,) = dispatches(engine.schedule(0))
    finish(engine, first, 0, ResultStatus.FAILED, 1)
    engine.handle(Tick(), 0.0)
    (second,) = dispatches(engine.schedule(0))
    assert second.assignment.attempt == 2
    before = engine.ignored_reports
    finish(engine, first, 1)  # a duplicate/late report of attempt 1
    assert engine.ignored_reports == before + 1
    assert engine.run(R).tasks["t"].state is TaskState.DISPATCHED
    finish(engine, second, 2)
    assert engine.run(R).state is RunState.SUCCEEDED


def test_illegal_transition_raises() -> None:
    engine = engine_with(("a1", 1))
    wf = Workflow("i")
    wf.shell("t", "x")
    submit(engine, wf)
    view = engine.run(R).tasks["t"]
    with pytest.raises(IllegalTransition, match="ready -> succeeded"):
        engine._move(view, TaskState.SUCCEEDED, "test")


def test_cancel_run_cancels_running_and_pending() -> None:
    engine = engine_with(("a1", 2))
    submit(engine, demo())
    (a,) = dispatches(engine.schedule(0))
    start(engine, a, 0)
    commands = engine.handle(RunCancelRequested(R), 1)
    cancels = [c for c in commands if isinstance(c, CancelAttempt)]
    assert [(c.agent, c.ref.task, c.ref.attempt) for c in cancels] == [("a1", "A", 1)]
    run = engine.run(R)
    assert run.state is RunState.CANCELLED
    assert {v.state for v in run.tasks.values()} == {TaskState.CANCELLED}
    # the agent's "cancelled" report still frees its slot
    finish(engine, a, 2, ResultStatus.CANCELLED, None)
    assert engine.agents[AgentId("a1")].free == 2


def test_agent_loss_requeues_with_a_new_attempt() -> None:
    wf = Workflow("l")
    wf.shell("t", "sleep 10")
    engine = engine_with(("a1", 1), ("a2", 1))
    submit(engine, wf)
    (d,) = dispatches(engine.schedule(0))
    lost = d.agent
    start(engine, d, 0)
    engine.handle(AgentOffline(lost, "connection lost"), 1)
    (again,) = dispatches(engine.schedule(1))
    assert again.agent != lost
    assert again.assignment.attempt == 2
    finish(engine, d, 2)  # late result from the lost attempt
    assert engine.run(R).tasks["t"].state is TaskState.DISPATCHED
    finish(engine, again, 3)
    assert engine.run(R).state is RunState.SUCCEEDED


def test_heartbeat_ttl_detects_silent_agent() -> None:
    engine = engine_with(("a1", 1), heartbeat_ttl=10.0)
    wf = Workflow("h")
    wf.shell("t", "x")
    submit(engine, wf)
    assert len(dispatches(engine.schedule(0))) == 1
    assert engine.next_deadline() == pytest.approx(10.0)
    engine.handle(Tick(), 5.0)
    assert engine.agents[AgentId("a1")].online
    engine.handle(Tick(), 10.5)
    assert not engine.agents[AgentId("a1")].online
    assert engine.run(R).tasks["t"].state is TaskState.READY


def test_heartbeat_deadlines_are_rescanned_at_most_every_second_and_never_late() -> None:
    """A fleet's heartbeats wake the drive loop hundreds of times a second: given ``now``, the scan
    of every agent's deadline is reused for a second (``dagon.core._silence``), only ever early."""
    engine = engine_with(("a1", 1), heartbeat_ttl=10.0)
    assert engine.next_deadline(0.0) == pytest.approx(10.0)  # scanned
    engine.handle(AgentSeen(AgentId("a1")), 0.5)  # a heartbeat: the real deadline moves to 10.5
    assert engine.next_deadline(0.6) == pytest.approx(10.0)  # the cached scan: early, never late
    assert engine.next_deadline(1.2) == pytest.approx(10.5)  # rescanned
    engine.handle(AgentSeen(AgentId("a1")), 9.0)  # real deadline 19.0; the cache says 10.5 until 2.2
    assert engine.next_deadline(10.6) == pytest.approx(19.0)  # a passed deadline is rescanned at once
    engine.handle(Tick(), 10.6)
    assert engine.agents[AgentId("a1")].online  # the early tick found nothing to do
    engine.handle(AgentOffline(AgentId("a1"), "gone"), 11.0)
    assert engine.next_deadline(11.1) == pytest.approx(19.0)  # the cached scan: early is harmless
    assert engine.next_deadline(11.7) == pytest.approx(12.7)  # rescanned: agents known, none online
    engine.handle(AgentAnnounced(AgentId("a2"), caps(slots=1)), 11.8)  # comes online in the cached window
    assert engine.next_deadline(12.0) == pytest.approx(12.7)
    assert engine.next_deadline(12.8) == pytest.approx(21.8)  # seen at the rescan
    engine.handle(Tick(), 22.0)
    assert not engine.agents[AgentId("a2")].online  # silent past its TTL: lost, on time
    assert Engine().next_deadline(0.0) is None  # no agents, nothing pending: no deadline


def test_task_lost_too_often_fails() -> None:
    engine = engine_with(("a1", 1), max_lost=1)
    wf = Workflow("m")
    wf.shell("t", "x")
    submit(engine, wf)
    for n in range(2):
        assert len(dispatches(engine.schedule(float(n)))) == 1
        engine.handle(AgentOffline(AgentId("a1"), "gone"), float(n))
        engine.handle(AgentAnnounced(AgentId("a1"), caps(slots=1)), float(n))
    view = engine.run(R).tasks["t"]
    assert view.state is TaskState.FAILED
    assert "lost 2 times" in view.cause


def test_rejections() -> None:
    wf = Workflow("rj")
    wf.shell("soft", "x")
    wf.shell("hard", "y")
    engine = engine_with(("a1", 2))
    submit(engine, wf)
    for d in dispatches(engine.schedule(0)):
        permanent = d.assignment.task == "hard"
        engine.handle(TaskRejected(AgentId("a1"), Rejection(d.assignment.ref, "nope", permanent)), 0)
    run = engine.run(R)
    assert run.tasks["soft"].state is TaskState.READY
    assert run.tasks["hard"].state is TaskState.FAILED
    assert dispatches(engine.schedule(0.1)) == []  # agent briefly left alone
    (again,) = dispatches(engine.schedule(1.0))
    assert again.assignment.task == "soft"
    assert again.assignment.attempt == 2


def test_slots_are_never_exceeded_and_least_loaded_spreads() -> None:
    wf = Workflow("w")
    for i in range(10):
        wf.shell(f"t{i}", "x")
    engine = engine_with(("a1", 2), ("a2", 3))
    submit(engine, wf)
    batch = dispatches(engine.schedule(0))
    per_agent = {a: sum(1 for d in batch if d.agent == a) for a in ("a1", "a2")}
    assert per_agent == {"a1": 2, "a2": 3}
    assert dispatches(engine.schedule(0)) == []


def test_constraints_labels_pin_runtime_and_hosts() -> None:
    engine = Engine(rng=random.Random(0))
    engine.handle(AgentAnnounced(AgentId("edge"), caps(slots=4, host="h-edge", labels={"site": "edge"})), 0)
    engine.handle(AgentAnnounced(AgentId("hpc"), caps(slots=4, host="h-hpc")), 0)
    wf = Workflow("c")
    wf.shell("labelled", "x > f", labels={"site": "edge"})
    wf.shell("pinned", "x", agent="hpc")
    wf.shell("consumer", "cat workflow:///labelled/f")
    wf.shell("impossible", "x", labels={"gpu": "yes"})
    wf.shell("docker", "x", runtime="docker")
    submit(engine, wf)
    placed = {str(d.assignment.task): d for d in dispatches(engine.schedule(0))}
    assert placed["labelled"].agent == "edge"
    assert placed["pinned"].agent == "hpc"
    assert "impossible" not in placed
    assert "docker" not in placed
    finish(engine, placed["labelled"], 1)
    consumer = next(d for d in dispatches(engine.schedule(1)) if d.assignment.task == "consumer")
    assert consumer.agent == "edge"  # inputs live on h-edge only
    assert engine.run(R).tasks["impossible"].state is TaskState.READY


def test_every_transition_is_reported_with_a_cause() -> None:
    engine = engine_with(("a1", 1))
    wf = Workflow("t")
    wf.shell("x", "x")
    commands = engine.handle(RunSubmitted(R, wf, wf.graph()), 0)
    (d,) = dispatches(commands := commands + engine.schedule(0))
    commands += finish(engine, d, 1)
    moves = [(c.old, c.new) for c in commands if isinstance(c, TaskTransition)]
    assert moves == [
        (TaskState.PENDING, TaskState.READY),
        (TaskState.READY, TaskState.DISPATCHED),
        (TaskState.DISPATCHED, TaskState.SUCCEEDED),
    ]
    assert all(c.cause for c in commands if isinstance(c, TaskTransition))


def test_assignment_lost_on_the_way_is_sent_again() -> None:
    from dagon.core import AgentSeen

    engine = engine_with(("a1", 1), lost_assignment_grace=30.0)
    wf = Workflow("lost")
    wf.shell("t", "x")
    submit(engine, wf)
    (d,) = dispatches(engine.schedule(0))
    engine.handle(AgentSeen(AgentId("a1"), held=0), 10.0)  # too early: may still be on its way
    assert engine.run(R).tasks["t"].state is TaskState.DISPATCHED
    engine.handle(AgentSeen(AgentId("a1"), held=1), 40.0)  # the agent holds it: fine
    assert engine.run(R).tasks["t"].state is TaskState.DISPATCHED
    engine.handle(AgentSeen(AgentId("a1"), held=0), 40.0)  # idle agent, old dispatch: lost
    view = engine.run(R).tasks["t"]
    assert view.state is TaskState.READY
    assert "never reached agent a1" in view.cause
    (again,) = dispatches(engine.schedule(40.0))
    assert again.assignment.attempt == 2
    finish(engine, d, 41.0)  # a late report of the first attempt is fenced off
    assert engine.run(R).tasks["t"].state is TaskState.DISPATCHED
    finish(engine, again, 42.0)
    assert engine.run(R).state is RunState.SUCCEEDED
