"""The Charliecloud runtime end to end with the real ``ch-run``: directory and SquashFS images."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest
from integration._stack import memory_stack

import dagon
from dagon.agent import CharliecloudRuntime, Execution
from dagon.core import RunState, TaskState
from dagon.protocol import ResultStatus, RunId, TaskAssignment, TaskName
from dagon.protocol.transport import MemoryHub

pytestmark = pytest.mark.charliecloud


def _pipeline(image: str) -> dagon.Workflow:
    wf = dagon.Workflow("hpc")
    wf.container(
        "produce", image=image, runtime="charliecloud", env={"WHO": "ch"},
        command='mkdir -p out && echo "hello from $WHO" > out/msg.txt && echo "${HOME-nohome}" && cat /etc/os-release',
    )  # fmt: skip
    wf.container(
        "consume",
        image=image,
        runtime="charliecloud",
        command="tr a-z A-Z < workflow:///produce/out/msg.txt > shout.txt && pwd > where.txt",
    )
    return wf


async def test_directory_image_pipeline_passes_data_through_workflow_refs(
    busybox_tree: Path, hub: MemoryHub, tmp_path: Path
) -> None:
    image = shutil.copytree(busybox_tree, tmp_path / "image", symlinks=True)
    async with memory_stack(hub, tmp_path, runtimes=[CharliecloudRuntime()]) as (coordinator, agents):
        assert "charliecloud" in agents[0].capabilities.runtimes
        result = await coordinator.wait(await coordinator.submit(_pipeline(str(image)), keep_scratch=True))
    produce, consume = result["produce"], result["consume"]
    # busybox has no /etc/os-release: proof the command ran in the image, not on the host
    assert produce.state is TaskState.FAILED and "os-release" in produce.stderr_tail, produce
    assert consume.state is TaskState.UPSTREAM_FAILED
    # the agent's HOME is not passed into the container
    assert (Path(produce.workdir) / ".dagon" / "stdout").read_text() == "nohome\n"

    wf = _pipeline(str(image))
    wf["produce"].command = wf["produce"].command.replace(" && cat /etc/os-release", "")
    async with memory_stack(hub, tmp_path / "2", runtimes=[CharliecloudRuntime()]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    assert result.state is RunState.SUCCEEDED, result
    workdir = Path(result["consume"].workdir)
    assert (workdir / "shout.txt").read_text() == "HELLO FROM CH\n"
    assert (workdir / "where.txt").read_text() == f"{workdir}\n"
    command = (workdir / ".dagon" / "command").read_text()
    assert command.startswith("exec ") and f"-b {workdir} -c {workdir}" in command


async def test_squashfs_image_binds_the_scratch_root(busybox_tree: Path, hub: MemoryHub, tmp_path: Path) -> None:
    scratch = tmp_path / "agent0" / "scratch"  # memory_stack's first agent
    tree = shutil.copytree(busybox_tree, tmp_path / "tree", symlinks=True)
    (tree / scratch.relative_to("/")).mkdir(parents=True)
    sqfs = tmp_path / "busybox.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(sqfs), "-quiet", "-noappend"], check=True, capture_output=True)
    wf = _pipeline(str(sqfs))
    wf["produce"].command = wf["produce"].command.replace(" && cat /etc/os-release", "")
    runtime = CharliecloudRuntime(scratch_root=scratch)
    async with memory_stack(hub, tmp_path, runtimes=[runtime]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    assert result.state is RunState.SUCCEEDED, result
    assert (Path(result["consume"].workdir) / "shout.txt").read_text() == "HELLO FROM CH\n"


def _execution(tmp_path: Path, image: Path, command: str, *, timeout: float | None = None) -> Execution:
    workdir = tmp_path / "work"
    (workdir / ".dagon").mkdir(parents=True)
    assignment = TaskAssignment(
        run=RunId("r"), workflow="w", task=TaskName("t"), attempt=1, runtime="charliecloud", command=command,
        timeout=timeout, runtime_options={"image": str(image)},
    )  # fmt: skip
    return Execution(
        assignment=assignment, command=command, workdir=workdir, env={},
        stdout=workdir / ".dagon" / "stdout", stderr=workdir / ".dagon" / "stderr",
    )  # fmt: skip


def _running(marker: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or ()):
            found.append(proc.pid)
    return found


async def test_exit_code_timeout_and_cancel(busybox_tree: Path, tmp_path: Path) -> None:
    runtime = CharliecloudRuntime()
    failed = await runtime.run(_execution(tmp_path / "a", busybox_tree, "echo bad >&2; exit 9"))
    assert failed.status is ResultStatus.FAILED and failed.exit_code == 9 and failed.stderr_tail == "bad\n"

    timed = await runtime.run(_execution(tmp_path / "b", busybox_tree, "sleep 61.25", timeout=0.5))
    assert timed.status is ResultStatus.TIMEOUT
    assert _running("61.25") == []

    task = asyncio.ensure_future(runtime.run(_execution(tmp_path / "c", busybox_tree, "echo up; sleep 62.5")))
    async with asyncio.timeout(20):
        while not _running("62.5") or not (tmp_path / "c" / "work" / ".dagon" / "stdout").read_text():
            await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _running("62.5") == []


async def test_ch_run_failure_is_an_agent_error(busybox_tree: Path, tmp_path: Path) -> None:
    ex = _execution(tmp_path, busybox_tree, "true")
    ex.assignment.runtime_options["binds"] = [str(tmp_path / "missing")]
    outcome = await CharliecloudRuntime().run(ex)
    assert outcome.status is ResultStatus.ERROR
    assert "ch-run could not start the container" in outcome.error and "missing" in outcome.error


async def test_symlink_staged_inputs_resolve_inside(busybox_tree: Path, hub: MemoryHub, tmp_path: Path) -> None:
    image = shutil.copytree(busybox_tree, tmp_path / "image", symlinks=True)
    wf = dagon.Workflow("links")
    wf.container("make", image=str(image), runtime="charliecloud", command="mkdir d && echo linked > d/x.txt")
    # private_tmp: ch-run shares the host's /tmp by default, which would hide a missing bind
    wf.container("use", image=str(image), runtime="charliecloud", stage_mode="symlink", private_tmp=True,
                 command="cat workflow:///make/d/x.txt > y.txt")  # fmt: skip
    async with memory_stack(hub, tmp_path, runtimes=[CharliecloudRuntime()]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    assert result.state is RunState.SUCCEEDED, result
    use = Path(result["use"].workdir)
    assert any(p.is_symlink() for p in await asyncio.to_thread(lambda: list(use.rglob("x.txt"))))
    assert (use / "y.txt").read_text() == "linked\n"
