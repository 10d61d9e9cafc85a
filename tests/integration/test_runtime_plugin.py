"""A runtime plugged into an agent gets staged, rewritten executions and reports their outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

import pytest

import dagon
from dagon.agent import Agent, Execution, Outcome, Runtime
from dagon.core import RunState, Task, TaskState
from dagon.protocol import ResultStatus
from dagon.protocol.transport import MemoryHub

from ._stack import agent_config, memory_stack


class ShRuntime(Runtime):
    """Runs the command with ``sh`` in exactly the environment it is given, and records each execution."""

    name: ClassVar[str] = "sh-test"

    def __init__(self) -> None:
        self.seen: list[Execution] = []
        self.closed = False

    async def run(self, execution: Execution) -> Outcome:
        self.seen.append(execution)
        with execution.stdout.open("wb") as out, execution.stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", execution.command, cwd=execution.workdir, env=dict(execution.env),
                stdout=out, stderr=err,
            )  # fmt: skip
            code = await proc.wait()
        status = ResultStatus.SUCCEEDED if code == 0 else ResultStatus.FAILED
        return Outcome(status, code, stderr_tail=execution.stderr.read_text()[-200:])

    async def aclose(self) -> None:
        self.closed = True


async def test_plugged_runtime_runs_staged_tasks_and_reports_failures(hub: MemoryHub, tmp_path: Path) -> None:
    runtime = ShRuntime()
    wf = dagon.Workflow("plug")
    wf.shell("make", "echo payload > data.txt")
    wf.add(
        Task(
            name="use",
            command='cat workflow:///make/data.txt > copy.txt; echo "$DAGON_TASK:$GREETING:${HOME-unset}" > env.txt',
            runtime="sh-test",
            env={"GREETING": "hi"},
            runtime_options={"image": "local/busybox"},
        )
    )
    wf.add(Task(name="bad", command="echo broken >&2; exit 3", runtime="sh-test", after=("make",)))
    async with memory_stack(hub, tmp_path, runtimes=[runtime]) as (coordinator, agents):
        assert "sh-test" in agents[0].capabilities.runtimes
        result = await coordinator.wait(await coordinator.submit(wf))
    assert runtime.closed
    assert result.state is RunState.FAILED
    use, bad = result["use"], result["bad"]
    assert use.state is TaskState.SUCCEEDED
    workdir = Path(use.workdir)
    assert (workdir / "copy.txt").read_text() == "payload\n"
    # the agent's own environment (HOME) is not handed to the runtime
    assert (workdir / "env.txt").read_text() == "use:hi:unset\n"
    execution = next(e for e in runtime.seen if e.assignment.task == "use")
    assert "workflow://" not in execution.command and str(workdir) in execution.command
    assert execution.assignment.runtime_options == {"image": "local/busybox"}
    assert bad.state is TaskState.FAILED and bad.exit_code == 3 and "broken" in bad.stderr_tail


def test_runtime_names_cannot_shadow_builtins(tmp_path: Path) -> None:
    class Shadow(ShRuntime):
        name: ClassVar[str] = "process"

    with pytest.raises(ValueError, match="runtime names"):
        Agent(config=agent_config(tmp_path, "a"), connect=MemoryHub().transport, runtimes=[Shadow()], insecure=True)  # type: ignore[arg-type]
