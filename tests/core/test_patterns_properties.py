"""Hypothesis: random DAGs with dynamic maps (random manifests) and a linked second run,
under random completion and failure orders."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dagon.core import (
    LEGAL,
    TERMINAL,
    AgentAnnounced,
    Dispatch,
    Engine,
    RunState,
    RunSubmitted,
    Task,
    TaskFinished,
    TaskState,
    TaskTransition,
    Workflow,
)
from dagon.protocol import AgentId, OutputFile, ResultStatus, RunId, TaskResult

from ._sim import caps

R1, R2 = RunId("one"), RunId("two")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Workflow, Workflow, int, bool]:
    n = draw(st.integers(1, 12))
    wf = Workflow("W1")
    templates: set[int] = set()
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else []
        refs = " ".join(
            f"workflow:///t{d}/f{d}.txt" if d not in templates else f"workflow:///t{d}/out.txt" for d in deps
        )
        if len(deps) > 0 and draw(st.booleans()) and deps[0] not in templates:
            glob = f"workflow:///t{deps[0]}/parts/*"
            wf.add(Task(name=f"t{i}", command=f"cat {glob} {refs} > out.txt", map_over=glob))
            templates.add(i)
        else:
            wf.shell(f"t{i}", f"cat {refs} > f{i}.txt", after=[f"t{d}" for d in deps])
    other = Workflow("W2")
    producer = draw(st.integers(0, n - 1))
    path = "out.txt" if producer in templates else f"f{producer}.txt"
    other.shell("u", f"cat workflow://W1/t{producer}/{path} > u.txt")
    other.shell("v", "cat workflow:///u/u.txt")
    return wf, other, draw(st.integers(0, 2**32 - 1)), draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_maps_and_linked_runs_terminate_consistently(scenario: tuple[Workflow, Workflow, int, bool]) -> None:
    wf, other, seed, failures = scenario
    rng = random.Random(seed)
    engine = Engine(rng=random.Random(seed))
    engine.handle(AgentAnnounced(AgentId("a"), caps(slots=3)), 0.0)
    log = engine.handle(RunSubmitted(R1, wf, wf.graph(external=True)), 0.0)
    log += engine.handle(RunSubmitted(R2, other, other.graph(external=True)), 0.0)
    succeeded: set[tuple[str, str]] = set()
    inflight: list[Dispatch] = []
    now = 0.0
    for _ in range(3000):
        now += 1.0
        commands = engine.schedule(now)
        for cmd in commands:
            if isinstance(cmd, Dispatch):
                a = cmd.assignment
                run = engine.run(a.run)
                deps = {(a.run, d) for d in run.graph.deps[a.task]}
                deps |= {(R1, r.task) for r in run.graph.external.get(a.task, ())}
                assert deps <= succeeded, (a.task, deps - succeeded)
                for staged in a.inputs:  # every staged input comes from a finished producer
                    assert staged.source_dir, staged
                inflight.append(cmd)
        log += commands
        if all(r.state is not RunState.RUNNING for r in engine.runs.values()) and not inflight:
            break
        if not inflight:
            continue
        d = inflight.pop(rng.randrange(len(inflight)))
        a = d.assignment
        ok = not failures or rng.random() < 0.85
        files = tuple(OutputFile(f"parts/p{k}", 1, "0" * 64) for k in range(rng.randrange(4)))
        result = TaskResult(
            a.run, a.task, a.attempt, ResultStatus.SUCCEEDED if ok else ResultStatus.FAILED, 0 if ok else 1,
            now, now, workdir=f"/w/{a.run}/{a.task}", outputs=files,
        )  # fmt: skip
        log += engine.handle(TaskFinished(AgentId("a"), result), now)
        if engine.run(a.run).tasks[a.task].state is TaskState.SUCCEEDED:
            succeeded.add((a.run, a.task))
    for run in engine.runs.values():
        assert run.state is not RunState.RUNNING, "a run did not terminate"
        assert all(v.state in TERMINAL for v in run.tasks.values()), "a task was stranded"
        # a template is expanded when ready, so only one whose producer failed remains
        assert all(v.state is TaskState.UPSTREAM_FAILED for v in run.tasks.values() if v.spec.map_over)
        actual = {s: sum(1 for v in run.tasks.values() if v.state is s) for s in TaskState}
        assert {s: n for s, n in run.counts.items() if n} == {s: n for s, n in actual.items() if n}
        if not failures:
            assert run.state is RunState.SUCCEEDED
    for cmd in log:
        if isinstance(cmd, TaskTransition):
            assert cmd.new in LEGAL[cmd.old]
