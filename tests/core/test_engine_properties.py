"""Hypothesis: random DAGs x random completion, failure, loss and cancel orders."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dagon.core import (
    LEGAL,
    TERMINAL,
    AgentAnnounced,
    AgentOffline,
    Dispatch,
    Engine,
    Retry,
    RunCancelRequested,
    RunState,
    RunSubmitted,
    TaskState,
    TaskTransition,
    Tick,
    Workflow,
)
from dagon.protocol import AgentId, ResultStatus, RunId

from ._sim import caps, finish, start

R = RunId("prop")
STATUSES = [
    ResultStatus.SUCCEEDED,
    ResultStatus.FAILED,
    ResultStatus.TIMEOUT,
    ResultStatus.ERROR,
    ResultStatus.CANCELLED,
]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Workflow, int, int, int, bool]:
    n = draw(st.integers(1, 30))
    wf = Workflow("p")
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        retries = draw(st.integers(0, 2))
        wf.shell(f"t{i}", "x", after=[f"t{d}" for d in sorted(deps)], retry=Retry(attempts=retries, backoff=0.5))
    agents = draw(st.integers(1, 3))
    slots = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    failures = draw(st.booleans())
    return wf, agents, slots, seed, failures


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_random_runs_terminate_consistently(scenario: tuple[Workflow, int, int, int, bool]) -> None:
    wf, n_agents, slots, seed, failures = scenario
    rng = random.Random(seed)
    graph = wf.graph()
    engine = Engine(rng=random.Random(seed), max_lost=2)
    names = [AgentId(f"a{i}") for i in range(n_agents)]
    for name in names:
        engine.handle(AgentAnnounced(name, caps(slots=slots)), 0.0)
    now = 0.0
    log = engine.handle(RunSubmitted(R, wf, graph), now)
    inflight: list[Dispatch] = []
    succeeded: set[str] = set()
    cancel_at = rng.randrange(200) if failures and rng.random() < 0.3 else None
    for step in range(5000):
        now += rng.random()
        commands = engine.handle(Tick(), now) + engine.schedule(now)
        for cmd in commands:
            if isinstance(cmd, Dispatch):
                task = cmd.assignment.task
                # never before every dependency succeeded
                assert graph.deps[task] <= succeeded, (task, graph.deps[task] - succeeded)
                inflight.append(cmd)
        log += commands
        for agent in engine.agents.values():
            assert len(agent.inflight) <= agent.capabilities.slots
        if engine.run(R).state is not RunState.RUNNING and not inflight:
            break
        if cancel_at is not None and step == cancel_at:
            log += engine.handle(RunCancelRequested(R), now)
        if failures and rng.random() < 0.02:
            victim = rng.choice(names)
            log += engine.handle(AgentOffline(victim, "chaos"), now)
            log += engine.handle(AgentAnnounced(victim, caps(slots=slots)), now)
            inflight = [d for d in inflight if d.agent != victim]
            continue
        if not inflight:
            continue
        d = inflight.pop(rng.randrange(len(inflight)))
        if rng.random() < 0.3:
            log += start(engine, d, now)
        status = rng.choice(STATUSES) if failures else ResultStatus.SUCCEEDED
        log += finish(engine, d, now, status, 0 if status is ResultStatus.SUCCEEDED else 1)
        view = engine.run(R).tasks[d.assignment.task]
        if view.state is TaskState.SUCCEEDED:
            succeeded.add(view.name)
    run = engine.run(R)
    assert run.state is not RunState.RUNNING, "the run did not terminate"
    assert all(v.state in TERMINAL for v in run.tasks.values()), "a task was stranded"
    if not failures:
        assert run.state is RunState.SUCCEEDED
        assert all(v.state is TaskState.SUCCEEDED for v in run.tasks.values())
    # every reported transition was legal, and the counts match reality
    for cmd in log:
        if isinstance(cmd, TaskTransition):
            assert cmd.new in LEGAL[cmd.old]
    actual = {state: sum(1 for v in run.tasks.values() if v.state is state) for state in TaskState}
    assert {s: n for s, n in run.counts.items() if n} == {s: n for s, n in actual.items() if n}
