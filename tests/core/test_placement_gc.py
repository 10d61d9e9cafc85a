"""Tier 1: placement constraints, resource slots, locality, waiting reasons and GC refcounts (no event loop)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagon.core import (
    AgentAnnounced,
    AgentOffline,
    Command,
    Dispatch,
    Engine,
    Retry,
    RunSubmitted,
    TaskFinished,
    TaskState,
    Tick,
    ValidationError,
    Workflow,
)
from dagon.core._events import DeleteScratch, TaskWaiting
from dagon.core._fit import check_placeable, held, unmet
from dagon.protocol import AgentId, Capabilities, OutputFile, ResultStatus, RunId, TaskAssignment, TaskName, TaskResult

from ._sim import caps, dispatches

R = RunId("run-1")


def agent_caps(**changes: object) -> Capabilities:
    return dataclasses.replace(caps(slots=4), **changes)  # type: ignore[arg-type]


def engine_with(agents: dict[str, Capabilities]) -> Engine:
    engine = Engine(rng=random.Random(1))
    for name, c in agents.items():
        engine.handle(AgentAnnounced(AgentId(name), c), 0.0)
    return engine


def submit(engine: Engine, wf: Workflow, *, keep_scratch: bool = False) -> list[Command]:
    return engine.handle(RunSubmitted(R, wf, wf.graph(), keep_scratch=keep_scratch), 0.0)


def done(
    engine: Engine,
    d: Dispatch,
    now: float = 1.0,
    *,
    size: int = 0,
    status: ResultStatus = ResultStatus.SUCCEEDED,
) -> list[Command]:
    a = d.assignment
    outputs = (OutputFile("out.bin", size, "0" * 64),) if size else ()
    code = 0 if status is ResultStatus.SUCCEEDED else 1
    result = TaskResult(
        a.run, a.task, a.attempt, status, code, now, now, workdir=f"/s/{a.run}/{a.task}-{a.attempt}", outputs=outputs
    )
    return engine.handle(TaskFinished(AgentId(d.agent), result), now)


def by_task(commands: list[Command]) -> dict[str, Dispatch]:
    return {d.assignment.task: d for d in dispatches(commands)}


def deletions(commands: list[Command]) -> list[tuple[str, str, int]]:
    return [(c.agent, c.ref.task, c.ref.attempt) for c in commands if isinstance(c, DeleteScratch)]


# -- constraints ------------------------------------------------------------


def test_arch_and_labels_choose_the_matching_agent() -> None:
    engine = engine_with({"x86": agent_caps(), "arm": agent_caps(arch="aarch64", labels={"site": "edge"})})
    wf = Workflow("w")
    wf.shell("A", "true", arch="aarch64")
    wf.shell("B", "true", labels={"site": "edge"})
    wf.shell("C", "true", arch="x86_64")
    submit(engine, wf)
    placed = {t: d.agent for t, d in by_task(engine.schedule(0)).items()}
    assert placed == {"A": "arm", "B": "arm", "C": "x86"}


def test_colocate_runs_on_the_partners_agent_and_is_a_dependency() -> None:
    engine = engine_with({"a1": agent_caps(), "a2": agent_caps()})
    wf = Workflow("w")
    wf.shell("A", "true")
    wf.shell("B", "true", colocate="A")
    assert wf.graph().deps["B"] == frozenset({"A"})
    submit(engine, wf)
    a = by_task(engine.schedule(0))["A"]
    done(engine, a)
    # Load a's agent so that load alone would pick the other one.
    b = by_task(engine.schedule(1))["B"]
    assert b.agent == a.agent


def test_unsatisfiable_at_submission_names_task_and_constraint() -> None:
    engine = engine_with({"a1": agent_caps(), "a2": agent_caps(labels={"gpu": "no"})})
    wf = Workflow("w")
    wf.shell("ok", "true")
    wf.shell("big", "true", cpus=64)
    wf.shell("gpu", "true", labels={"gpu": "yes"})
    wf.shell("arm", "true", arch="aarch64")
    with pytest.raises(ValidationError) as info:
        check_placeable(wf, engine.agents.values())
    text = str(info.value)
    assert "task 'big'" in text and "needs 64 cpus, agent has 4" in text
    assert "task 'gpu'" in text and "label gpu=yes missing" in text
    assert "task 'arm'" in text and "needs arch aarch64, agent is x86_64" in text
    assert "task 'ok'" not in text
    assert sorted(info.value.tasks) == ["arm", "big", "gpu"]


def test_colocated_tasks_must_share_an_eligible_agent() -> None:
    engine = engine_with({"a1": agent_caps(labels={"k": "1"}), "a2": agent_caps(labels={"k": "2"})})
    wf = Workflow("w")
    wf.shell("A", "true", labels={"k": "1"})
    wf.shell("B", "true", labels={"k": "2"}, colocate="A")
    with pytest.raises(ValidationError, match=r"task 'B'.*task 'A' \(colocated\) cannot run there"):
        check_placeable(wf, engine.agents.values())


def test_no_known_agent_means_no_check() -> None:
    wf = Workflow("w")
    wf.shell("big", "true", cpus=1000)
    check_placeable(wf, [])  # waits for agents instead (the embedded default starts its agent later)


# -- resource slots -----------------------------------------------------------


def test_cpus_and_memory_are_held_while_running() -> None:
    engine = engine_with({"a1": agent_caps(cpus=4, slots=4, memory=8 * 2**30)})
    agent = engine.agents[AgentId("a1")]
    wf = Workflow("w")
    for i in range(3):
        wf.shell(f"c{i}", "true", cpus=2)
    wf.shell("m", "true", cpus=0.5, memory=7 * 2**30)
    wf.shell("m2", "true", cpus=0.5, memory=2 * 2**30)
    submit(engine, wf)
    now = 0.0
    rounds = 0
    while engine.run(R).unfinished:
        batch = dispatches(engine.schedule(now))
        cpus, memory = held(agent)
        assert cpus <= 4 and memory <= 8 * 2**30, (cpus, memory)
        assert len(agent.inflight) < 5  # slots alone (4) would not have stopped 4 of these
        for d in batch[:1]:  # finish one at a time
            now += 1
            done(engine, d, now)
        if not batch:
            for view in list(agent.inflight.values()):
                now += 1
                done(engine, Dispatch(AgentId("a1"), _assignment_of(engine, view.name)), now)
                break
        rounds += 1
        assert rounds < 20
    assert engine.run(R).counts[TaskState.SUCCEEDED] == 5


def _assignment_of(engine: Engine, task: str) -> TaskAssignment:
    view = engine.run(R).tasks[task]
    return TaskAssignment(run=R, workflow="w", task=TaskName(task), attempt=view.attempt, runtime="process", command="")


# -- locality ---------------------------------------------------------------------


def test_consumer_goes_to_the_agent_with_most_input_bytes() -> None:
    engine = engine_with({"a1": agent_caps(host_id="h1"), "a2": agent_caps(host_id="h2")})
    wf = Workflow("w")
    wf.shell("small", "true", agent="a1")
    wf.shell("large", "true", agent="a2")
    wf.shell("use", "cat workflow:///small/out.bin workflow:///large/out.bin")
    submit(engine, wf)
    d = by_task(engine.schedule(0))
    done(engine, d["small"], size=10)
    done(engine, d["large"], size=10_000_000)
    assert by_task(engine.schedule(1))["use"].agent == "a2"


def test_locality_between_agents_of_one_host() -> None:
    engine = engine_with({"a1": agent_caps(), "a2": agent_caps(), "a3": agent_caps()})
    wf = Workflow("w")
    wf.shell("p", "true", agent="a3")
    wf.shell("use", "cat workflow:///p/out.bin")
    submit(engine, wf)
    done(engine, by_task(engine.schedule(0))["p"], size=5000)
    assert by_task(engine.schedule(1))["use"].agent == "a3"


# -- waiting reasons ------------------------------------------------------------


def waiting(commands: list[Command]) -> list[tuple[str, str]]:
    return [(c.task, c.reason) for c in commands if isinstance(c, TaskWaiting)]


def test_waiting_reason_busy_then_offline_once_each() -> None:
    engine = engine_with({"gpu": agent_caps(slots=1, labels={"gpu": "yes"}), "cpu": agent_caps(slots=4)})
    wf = Workflow("w")
    wf.shell("g1", "true", labels={"gpu": "yes"})
    wf.shell("g2", "true", labels={"gpu": "yes"})
    submit(engine, wf)
    out = engine.schedule(0)
    (placed,) = by_task(out)
    other = "g2" if placed == "g1" else "g1"
    assert waiting(out) == [(other, "waiting: 1 eligible agent(s) busy")]
    assert waiting(engine.schedule(0.1)) == []  # same reason: no new event
    assert engine.run(R).tasks[other].cause == "waiting: 1 eligible agent(s) busy"
    engine.handle(AgentOffline(AgentId("gpu"), "gone"), 0.2)
    out = engine.schedule(0.3)
    offline = "waiting: no eligible agent online (1 known, offline)"
    assert sorted(waiting(out)) == [("g1", offline), ("g2", offline)]
    assert waiting(engine.schedule(0.4)) == []
    assert engine.run(R).tasks[other].state is TaskState.READY


def test_plain_queueing_sets_the_cause_without_events() -> None:
    engine = engine_with({"a1": agent_caps(slots=1)})
    wf = Workflow("w")
    for i in range(5):
        wf.shell(f"t{i}", "true")
    submit(engine, wf)
    out = engine.schedule(0)
    assert len(dispatches(out)) == 1
    assert waiting(out) == []
    assert waiting(engine.schedule(1)) == []
    queued = [v for v in engine.run(R).tasks.values() if v.state is TaskState.READY]
    assert any(v.cause == "waiting: 1 eligible agent(s) busy" for v in queued)


# -- garbage collection -----------------------------------------------------------


def gc_workflow(**options: object) -> Workflow:
    wf = Workflow("w")
    wf.shell("A", "echo a > out.bin", **options)  # type: ignore[arg-type]
    wf.shell("B", "cat workflow:///A/out.bin", retry=Retry(attempts=2, backoff=0, max_backoff=0))
    wf.shell("C", "cat workflow:///A/out.bin")
    wf.shell("D", "cat workflow:///B/x workflow:///C/x")
    return wf


def test_last_consumer_success_deletes_producer() -> None:
    engine = engine_with({"a1": agent_caps()})
    submit(engine, gc_workflow())
    a = by_task(engine.schedule(0))["A"]
    assert deletions(done(engine, a, size=100)) == []
    bc = by_task(engine.schedule(1))
    assert deletions(done(engine, bc["B"])) == []
    assert deletions(done(engine, bc["C"])) == [("a1", "A", 1)]
    d = by_task(engine.schedule(2))["D"]
    assert deletions(done(engine, d)) == [("a1", "B", 1), ("a1", "C", 1)]  # D itself: final output, kept
    assert engine.gc.peak(R) == {"a1": 100}


def test_retrying_or_failed_consumer_keeps_its_input() -> None:
    engine = engine_with({"a1": agent_caps()})
    submit(engine, gc_workflow())
    done(engine, by_task(engine.schedule(0))["A"], size=1)
    bc = by_task(engine.schedule(1))
    assert deletions(done(engine, bc["C"])) == []
    out = done(engine, bc["B"], status=ResultStatus.FAILED)  # retry pending: A still needed
    assert deletions(out) == []
    assert engine.run(R).tasks["B"].state is TaskState.RETRY_WAIT
    engine.handle(Tick(), 5.0)
    b2 = by_task(engine.schedule(5.0))["B"]
    assert b2.assignment.attempt == 2
    assert deletions(done(engine, b2, 6.0, status=ResultStatus.FAILED)) == []
    engine.handle(Tick(), 10.0)
    b3 = by_task(engine.schedule(10.0))["B"]
    assert deletions(done(engine, b3, 11.0, status=ResultStatus.FAILED)) == []  # failed for good: kept
    assert engine.run(R).tasks["B"].state is TaskState.FAILED


@pytest.mark.parametrize("options", [{"keep": True}, {"checkpoint": True}])
def test_kept_and_checkpointed_outputs_are_never_deleted(options: dict[str, bool]) -> None:
    engine = engine_with({"a1": agent_caps()})
    submit(engine, gc_workflow(**options))
    done(engine, by_task(engine.schedule(0))["A"])
    bc = by_task(engine.schedule(1))
    out = done(engine, bc["B"]) + done(engine, bc["C"])
    assert deletions(out) == []


def test_keep_scratch_run_deletes_nothing() -> None:
    engine = engine_with({"a1": agent_caps()})
    submit(engine, gc_workflow(), keep_scratch=True)
    out: list[Command] = []
    now = 0.0
    while batch := dispatches(engine.schedule(now)):
        for d in batch:
            now += 1
            out += done(engine, d, now)
    assert deletions(out) == []


def test_spec_round_trip_of_placement_fields() -> None:
    wf = Workflow("w")
    wf.shell("A", "true", arch="aarch64", keep=True, checkpoint=True)
    wf.shell("B", "true", colocate="A")
    back = Workflow.from_dict(wf.to_dict())
    assert (back["A"].arch, back["A"].keep, back["A"].checkpoint, back["B"].colocate) == ("aarch64", True, True, "A")


# -- property: nothing a consumer may still read is deleted ----------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=9).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n),
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.randoms(use_true_random=False),
        )
    )
)
def test_deleted_outputs_have_no_unfinished_reader(
    case: tuple[int, list[tuple[int, int]], list[bool], random.Random],
) -> None:
    n, edges, fails, rng = case
    wf = Workflow("w")
    readers: dict[int, set[int]] = {i: set() for i in range(n)}
    for i in range(n):
        producers = sorted({a for a, b in edges if b == i and a < i})
        refs = " ".join(f"workflow:///t{p}/out.bin" for p in producers)
        for p in producers:
            readers[p].add(i)
        wf.shell(f"t{i}", f"true {refs}", retry=Retry(attempts=1, backoff=0, max_backoff=0))
    engine = engine_with({"a1": agent_caps(slots=3), "a2": agent_caps(slots=2, host_id="h2")})
    submit(engine, wf)
    failed_once: set[str] = set()
    deleted: list[str] = []
    now = 0.0
    for _ in range(10 * n):
        now += 1
        engine.handle(Tick(), now)
        batch = dispatches(engine.schedule(now))
        if not batch and engine.run(R).unfinished == 0:
            break
        rng.shuffle(batch)
        for d in batch:
            name = d.assignment.task
            fail = fails[int(name[1:])] and name not in failed_once
            if fail:
                failed_once.add(name)
            out = done(engine, d, now, size=7, status=ResultStatus.FAILED if fail else ResultStatus.SUCCEEDED)
            for _, task, _ in deletions(out):
                deleted.append(task)
                states = engine.run(R).tasks
                for reader in readers[int(task[1:])]:
                    assert states[f"t{reader}"].state is TaskState.SUCCEEDED
    assert len(deleted) == len(set(deleted))
    states = engine.run(R).tasks
    for i in range(n):
        if readers[i] and all(states[f"t{r}"].state is TaskState.SUCCEEDED for r in readers[i]):
            assert f"t{i}" in deleted
        else:
            assert f"t{i}" not in deleted


# -- property: placement honours constraints and resource budgets -----------------------


agent_st = st.builds(
    lambda cpus, slots, prefetch, gib, arch, gpu: agent_caps(
        cpus=cpus, slots=slots, prefetch=prefetch, memory=gib * 2**30, arch=arch, labels={"gpu": gpu}
    ),
    st.integers(1, 8),
    st.integers(1, 4),
    st.integers(0, 2),
    st.integers(1, 8),
    st.sampled_from(["x86_64", "aarch64"]),
    st.sampled_from(["yes", "no"]),
)
task_st = st.tuples(
    st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    st.integers(0, 4),
    st.sampled_from(["", "x86_64", "aarch64"]),
    st.sampled_from(["", "yes"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(agent_st, min_size=1, max_size=4), st.lists(task_st, min_size=1, max_size=12), st.randoms())
def test_dispatches_fit_constraints_and_budgets(
    agents: list[Capabilities], tasks: list[tuple[float, int, str, str]], rng: random.Random
) -> None:
    engine = engine_with({f"a{i}": c for i, c in enumerate(agents)})
    wf = Workflow("w")
    for i, (cpus, gib, arch, gpu) in enumerate(tasks):
        wf.shell(f"t{i}", "true", cpus=cpus, memory=gib * 2**30, arch=arch, labels={"gpu": gpu} if gpu else {})
    try:
        check_placeable(wf, engine.agents.values())
    except ValidationError as exc:
        bad = set(exc.tasks)
        for name in bad:  # each named task really fits no agent
            assert all(unmet(wf[name], a) is not None for a in engine.agents.values())
        return
    submit(engine, wf)
    now = 0.0
    for _ in range(10 * len(tasks)):
        now += 1
        batch = dispatches(engine.schedule(now))
        for agent in engine.agents.values():
            cpus, memory = held(agent)
            if len(agent.inflight) > 1:
                assert cpus <= max(agent.capabilities.cpus, agent.capabilities.slots) + agent.capabilities.prefetch
                assert memory <= agent.capabilities.memory
        for d in batch:
            assert unmet(wf[d.assignment.task], engine.agents[d.agent]) is None
        inflight = [(a, ref) for a in engine.agents.values() for ref in a.inflight]
        rng.shuffle(inflight)
        for agent, ref in inflight[: rng.randint(1, max(1, len(inflight)))]:
            view = agent.inflight[ref]
            finish_view(engine, agent.id, view.name, ref.attempt, now)
        if engine.run(R).unfinished == 0:
            break
    assert engine.run(R).counts[TaskState.SUCCEEDED] == len(tasks)  # every satisfiable task ran


def finish_view(engine: Engine, agent: AgentId, task: str, attempt: int, now: float) -> None:
    result = TaskResult(R, TaskName(task), attempt, ResultStatus.SUCCEEDED, 0, now, now)
    engine.handle(TaskFinished(agent, result), now)
