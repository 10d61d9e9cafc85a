"""Tier 1: meta-workflow references, dynamic fan-out, static patterns and the runtime check."""

from __future__ import annotations

import random

import pytest

from dagon.core import (
    AgentAnnounced,
    Dispatch,
    Engine,
    RunState,
    RunSubmitted,
    Task,
    TaskFinished,
    TaskState,
    ValidationError,
    Workflow,
)
from dagon.core._checks import check_runtimes, missing_runtimes
from dagon.core._patterns import gather, match_outputs, scatter, sweep
from dagon.protocol import AgentId, OutputFile, ResultStatus, RunId, TaskResult

from ._sim import caps, dispatches, finish


def engine_with_agent(slots: int = 8) -> Engine:
    engine = Engine(rng=random.Random(1))
    engine.handle(AgentAnnounced(AgentId("a1"), caps(slots=slots)), 0.0)
    return engine


def submit(engine: Engine, wf: Workflow, run: str) -> None:
    engine.handle(RunSubmitted(RunId(run), wf, wf.graph(external=True)), 0.0)


def finish_with(engine: Engine, d: Dispatch, outputs: list[str], now: float = 1.0) -> None:
    a = d.assignment
    files = tuple(OutputFile(p, 1, "0" * 64) for p in outputs)
    result = TaskResult(
        a.run, a.task, a.attempt, ResultStatus.SUCCEEDED, 0, now, now, workdir=f"/w/{a.task}", outputs=files
    )
    engine.handle(TaskFinished(AgentId(d.agent), result), now)


def drain(engine: Engine, now: float = 1.0) -> list[Dispatch]:
    return dispatches(engine.schedule(now))


# -- meta-workflows ------------------------------------------------------------------


def producer_consumer() -> tuple[Workflow, Workflow]:
    prod = Workflow("Prod")
    prod.shell("make", "echo data > out.txt")
    cons = Workflow("Cons")
    cons.shell("use", "cat workflow://Prod/make/out.txt > copy.txt")
    cons.shell("after", "cat workflow:///use/copy.txt")
    return prod, cons


def test_a_reference_to_another_workflow_is_an_error_without_external() -> None:
    _, cons = producer_consumer()
    with pytest.raises(ValidationError, match="references workflow 'Prod'"):
        cons.graph()
    graph = cons.graph(external=True)
    assert [r.text for r in graph.external["use"]] == ["workflow://Prod/make/out.txt"]
    assert graph.deps["use"] == frozenset()


def test_consumer_waits_for_the_producing_workflows_task_and_stages_from_it() -> None:
    engine = engine_with_agent()
    prod, cons = producer_consumer()
    submit(engine, prod, "p1")
    submit(engine, cons, "c1")
    first = drain(engine)
    assert [d.assignment.task for d in first] == ["make"]  # 'use' waits across runs
    assert engine.run(RunId("c1")).tasks["use"].state is TaskState.PENDING
    finish(engine, first[0], 1.0)
    second = drain(engine, 2.0)
    assert [d.assignment.task for d in second] == ["use"]
    (staged,) = second[0].assignment.inputs
    assert (staged.workflow, staged.task, staged.path) == ("Prod", "make", "out.txt")
    assert staged.source_dir == "/scratch/p1/make-1"
    assert engine.run(RunId("p1")).state is RunState.SUCCEEDED
    finish(engine, second[0], 2.0)
    finish(engine, drain(engine, 3.0)[0], 3.0)
    assert engine.run(RunId("c1")).state is RunState.SUCCEEDED


def test_producer_failure_fails_the_consumer_run() -> None:
    engine = engine_with_agent()
    prod, cons = producer_consumer()
    submit(engine, prod, "p1")
    submit(engine, cons, "c1")
    (d,) = drain(engine)
    finish(engine, d, 1.0, ResultStatus.FAILED, 3)
    consumer = engine.run(RunId("c1"))
    assert consumer.tasks["use"].state is TaskState.UPSTREAM_FAILED
    assert consumer.tasks["after"].state is TaskState.UPSTREAM_FAILED
    assert consumer.state is RunState.FAILED


def test_reference_to_finished_producer_needs_no_wait() -> None:
    engine = engine_with_agent()
    prod, cons = producer_consumer()
    submit(engine, prod, "p1")
    finish(engine, drain(engine)[0], 1.0)
    submit(engine, cons, "c1")
    assert [d.assignment.task for d in drain(engine, 2.0)] == ["use"]


def test_unknown_workflow_or_task_is_rejected_before_anything_changes() -> None:
    engine = engine_with_agent()
    _, cons = producer_consumer()
    with pytest.raises(ValidationError, match="no run on this coordinator"):
        submit(engine, cons, "c1")
    assert engine.runs == {}
    other = Workflow("Prod")
    other.shell("different", "true")
    submit(engine, other, "p1")
    with pytest.raises(ValidationError, match="has no task 'make'"):
        submit(engine, cons, "c1")
    assert list(engine.runs) == ["p1"]


# -- dynamic fan-out -------------------------------------------------------------------


def fanout() -> Workflow:
    wf = Workflow("fan")
    wf.shell("split", "mkdir parts && split -l 1 input parts/p_")
    wf.add(
        Task(name="count", command="wc -l < workflow:///split/parts/* > n.txt", map_over="workflow:///split/parts/*")
    )
    wf.shell("total", "cat workflow:///count/n.txt > total.txt")
    return wf


def test_map_template_expands_into_one_task_per_output_file() -> None:
    engine = engine_with_agent()
    submit(engine, fanout(), "r1")
    (split,) = drain(engine)
    finish_with(engine, split, ["parts/p_aa", "parts/p_ab", "parts/p_ac", "other.txt"])
    run = engine.run(RunId("r1"))
    assert "count" not in run.tasks
    mapped = drain(engine, 2.0)
    assert sorted(d.assignment.task for d in mapped) == ["count_p_aa", "count_p_ab", "count_p_ac"]
    by_name = {str(d.assignment.task): d.assignment for d in mapped}
    assert by_name["count_p_ab"].command == "wc -l < workflow:///split/parts/p_ab > n.txt"
    assert by_name["count_p_ab"].env["DAGON_ITEM"] == "parts/p_ab"
    assert [i.path for i in by_name["count_p_ab"].inputs] == ["parts/p_ab"]
    assert run.tasks["total"].state is TaskState.PENDING
    for d in mapped[:-1]:
        finish(engine, d, 3.0)
    assert drain(engine, 3.0) == []  # the gather waits for every copy
    finish(engine, mapped[-1], 3.0)
    (total,) = drain(engine, 4.0)
    assert total.assignment.command == (
        "cat workflow:///count_p_aa/n.txt workflow:///count_p_ab/n.txt workflow:///count_p_ac/n.txt > total.txt"
    )
    assert sorted(i.task for i in total.assignment.inputs) == ["count_p_aa", "count_p_ab", "count_p_ac"]
    finish(engine, total, 5.0)
    assert run.state is RunState.SUCCEEDED
    assert list(run.tasks) == ["split", "count_p_aa", "count_p_ab", "count_p_ac", "total"]


def test_map_over_no_matching_files_releases_the_gather() -> None:
    engine = engine_with_agent()
    submit(engine, fanout(), "r1")
    finish_with(engine, drain(engine)[0], ["unrelated.txt"])
    (total,) = drain(engine, 2.0)
    assert total.assignment.task == "total"
    assert total.assignment.command == "cat  > total.txt"


def test_failed_copy_fails_the_gather() -> None:
    engine = engine_with_agent()
    submit(engine, fanout(), "r1")
    finish_with(engine, drain(engine)[0], ["parts/p_aa", "parts/p_ab"])
    mapped = drain(engine, 2.0)
    finish(engine, mapped[0], 3.0, ResultStatus.FAILED, 1)
    finish(engine, mapped[1], 3.0)
    run = engine.run(RunId("r1"))
    assert run.tasks["total"].state is TaskState.UPSTREAM_FAILED
    assert run.state is RunState.FAILED


def test_match_outputs_globs_per_component() -> None:
    paths = ["a/x.txt", "a/b/y.txt", "z.txt", "a/x.csv"]
    assert match_outputs("a/*.txt", paths) == ["a/x.txt"]
    assert match_outputs("**/*.txt", paths) == ["a/b/y.txt", "a/x.txt", "z.txt"]
    assert match_outputs("*", paths) == ["z.txt"]


def test_map_over_must_reference_this_workflow() -> None:
    wf = Workflow("w")
    wf.shell("p", "true")
    wf.add(Task(name="m", command="cat workflow://Other/p/x", map_over="workflow://Other/p/*"))
    with pytest.raises(ValidationError, match="map_over must name a task of this workflow"):
        wf.graph(external=True)


# -- static patterns --------------------------------------------------------------------


def test_scatter_sweep_gather_build_plain_tasks() -> None:
    wf = Workflow("static")
    wf.shell("prep", "echo 3 > n")
    items = scatter(wf, "sq", "echo $(( {item} * {item} )) > out.txt  # {index}", [2, 3], after=["prep"])
    assert [t.command for t in items] == ["echo $(( 2 * 2 )) > out.txt  # 0", "echo $(( 3 * 3 )) > out.txt  # 1"]
    points = sweep(wf, "sim", "run --a {a} --b {b}", {"a": [1, 2], "b": ["x", "y y"]})
    assert [t.name for t in points] == ["sim_a-1_b-x", "sim_a-1_b-y_y", "sim_a-2_b-x", "sim_a-2_b-y_y"]
    assert points[1].command == "run --a 1 --b y y"
    total = gather(wf, "sum", "cat {inputs} > all.txt", items, "out.txt")
    assert total.command == "cat workflow:///sq_0/out.txt workflow:///sq_1/out.txt > all.txt"
    graph = wf.graph()
    assert graph.deps["sum"] == {"sq_0", "sq_1"}
    assert graph.deps["sq_0"] == {"prep"}


# -- runtimes ------------------------------------------------------------------------


def test_missing_runtime_is_named_with_its_tasks() -> None:
    engine = engine_with_agent()
    wf = Workflow("rt")
    wf.shell("ok", "true")
    wf.shell("boxed", "true", runtime="docker", runtime_options={"image": "busybox"})
    wf.shell("boxed2", "true", runtime="docker")
    assert missing_runtimes(wf, engine.agents.values()) == {"docker": ["boxed", "boxed2"]}
    with pytest.raises(ValidationError, match=r"runtime 'docker' \(needed by task\(s\) boxed, boxed2\)") as info:
        check_runtimes(wf, engine.agents.values())
    assert info.value.tasks == ("boxed", "boxed2")
    assert "process, python" in str(info.value)
