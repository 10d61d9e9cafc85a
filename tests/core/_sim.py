"""A tiny simulated agent world for driving the sans-IO engine without I/O."""

from __future__ import annotations

from dagon.core import Command, Dispatch, Engine, TaskFinished, TaskStarted
from dagon.protocol import AgentId, Capabilities, ResultStatus, TaskAssignment, TaskResult


def caps(
    *, slots: int = 2, host: str = "host-1", labels: dict[str, str] | None = None, prefetch: int = 0
) -> Capabilities:
    return Capabilities(
        hostname=host,
        host_id=host,
        arch="x86_64",
        os="linux",
        cpus=4,
        memory=8 * 2**30,
        runtimes=("process", "python"),
        labels=labels or {},
        slots=slots,
        version="test",
        prefetch=prefetch,
    )


def dispatches(commands: list[Command]) -> list[Dispatch]:
    return [c for c in commands if isinstance(c, Dispatch)]


def finish(
    engine: Engine,
    d: Dispatch,
    now: float,
    status: ResultStatus = ResultStatus.SUCCEEDED,
    exit_code: int | None = 0,
) -> list[Command]:
    a: TaskAssignment = d.assignment
    result = TaskResult(
        a.run, a.task, a.attempt, status, exit_code, now, now, workdir=f"/scratch/{a.run}/{a.task}-{a.attempt}"
    )
    return engine.handle(TaskFinished(AgentId(d.agent), result), now)


def start(engine: Engine, d: Dispatch, now: float) -> list[Command]:
    a = d.assignment
    return engine.handle(TaskStarted(AgentId(d.agent), a.ref, now, f"/scratch/{a.run}/{a.task}-{a.attempt}"), now)
