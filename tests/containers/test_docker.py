"""The Docker runtime against a real dockerd (private socket) and a locally imported busybox image."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest
from _containers import BUSYBOX_IMAGE, Dockerd
from integration._stack import memory_stack

import dagon
from dagon.agent import DockerRuntime, Execution
from dagon.core import RunState, TaskState
from dagon.protocol import ResultStatus, RunId, TaskAssignment, TaskName
from dagon.protocol.transport import MemoryHub

pytestmark = pytest.mark.docker


@pytest.fixture
async def docker(dockerd: Dockerd) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker(url=dockerd.url)
    try:
        yield client
    finally:
        await client.close()


async def _containers_of(docker: aiodocker.Docker, run: str) -> list[str]:
    found = await docker.containers.list(all=True, filters={"label": [f"dagon.run={run}"]})
    return [c.id for c in found]


def _execution(tmp_path: Path, command: str, *, run: str, timeout: float | None = None, **options: object) -> Execution:
    workdir = tmp_path / "work"
    (workdir / ".dagon").mkdir(parents=True)
    assignment = TaskAssignment(
        run=RunId(run), workflow="w", task=TaskName("t"), attempt=1, runtime="docker", command=command,
        timeout=timeout, runtime_options={"image": BUSYBOX_IMAGE, **options},
    )  # fmt: skip
    return Execution(
        assignment=assignment, command=command, workdir=workdir, env={"DAGON_TASK": "t"},
        stdout=workdir / ".dagon" / "stdout", stderr=workdir / ".dagon" / "stderr",
    )  # fmt: skip


async def test_two_container_pipeline_passes_data_through_workflow_refs(
    dockerd: Dockerd, docker: aiodocker.Docker, hub: MemoryHub, tmp_path: Path
) -> None:
    wf = dagon.Workflow("pipe")
    wf.container(
        "produce", image=BUSYBOX_IMAGE, pull="never", env={"WHO": "docker"},
        command='mkdir -p out && echo "hello from $WHO as $(id -u)" > out/msg.txt'
        " && echo produced && ls /sys/class/net",
    )  # fmt: skip
    wf.container(
        "consume",
        image=BUSYBOX_IMAGE,
        pull="never",
        command="tr a-z A-Z < workflow:///produce/out/msg.txt > shout.txt && pwd > where.txt && echo oops >&2",
    )
    runtime = DockerRuntime(url=dockerd.url)
    async with memory_stack(hub, tmp_path, runtimes=[runtime]) as (coordinator, agents):
        assert "docker" in agents[0].capabilities.runtimes
        run = await coordinator.submit(wf, keep_scratch=True)
        result = await coordinator.wait(run)
    assert result.state is RunState.SUCCEEDED, result
    produce, consume = result["produce"], result["consume"]
    assert consume.state is TaskState.SUCCEEDED and consume.exit_code == 0
    workdir = Path(consume.workdir)
    assert (workdir / "shout.txt").read_text() == f"HELLO FROM DOCKER AS {os.getuid()}\n"
    # the scratch directory is mounted at the same path and is the working directory
    assert (workdir / "where.txt").read_text() == f"{workdir}\n"
    # container logs land in the task's stdout/stderr files; the network is "none" (only lo)
    assert (Path(produce.workdir) / ".dagon" / "stdout").read_text() == "produced\nlo\n"
    assert (workdir / ".dagon" / "stderr").read_text() == "oops\n"
    assert any(o.path == "out/msg.txt" for o in produce.outputs)
    assert await _containers_of(docker, run) == []


async def test_failing_container_reports_its_exit_code(
    dockerd: Dockerd, docker: aiodocker.Docker, hub: MemoryHub, tmp_path: Path
) -> None:
    wf = dagon.Workflow("fail")
    wf.container("bad", image=BUSYBOX_IMAGE, command="echo broken >&2; exit 7")
    wf.container("after", image=BUSYBOX_IMAGE, command="true", after=["bad"])
    async with memory_stack(hub, tmp_path, runtimes=[DockerRuntime(url=dockerd.url)]) as (coordinator, _):
        run = await coordinator.submit(wf, keep_scratch=True)
        result = await coordinator.wait(run)
    assert result.state is RunState.FAILED
    bad = result["bad"]
    assert bad.state is TaskState.FAILED and bad.exit_code == 7 and "broken" in bad.stderr_tail
    assert result["after"].state is TaskState.UPSTREAM_FAILED
    assert await _containers_of(docker, run) == []


async def test_device_mapping(dockerd: Dockerd, tmp_path: Path) -> None:
    runtime = DockerRuntime(url=dockerd.url)
    try:
        ex = _execution(
            tmp_path,
            "test -c /dev/sensor0 && head -c 5 /dev/sensor0 | wc -c > n.txt",
            run="dev",
            devices=["/dev/zero:/dev/sensor0"],
        )
        outcome = await runtime.run(ex)
        without = await runtime.run(_execution(tmp_path / "2", "test -c /dev/sensor0", run="dev"))
    finally:
        await runtime.aclose()
    assert outcome.status is ResultStatus.SUCCEEDED, outcome
    assert (ex.workdir / "n.txt").read_text().strip() == "5"
    assert without.status is ResultStatus.FAILED and without.exit_code == 1


CGROUP_LIMITS = (
    # cgroup v2 first, then v1 (hosts differ); prints "<quota> <period>" and the memory limit
    "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max; cat /sys/fs/cgroup/memory.max; "
    "else echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us); "
    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; fi > limits.txt"
)


async def test_cpu_and_memory_limits_are_visible_inside(dockerd: Dockerd, hub: MemoryHub, tmp_path: Path) -> None:
    wf = dagon.Workflow("limits")
    wf.container("small", image=BUSYBOX_IMAGE, command=CGROUP_LIMITS, cpus=0.5, memory=64 * 2**20)
    async with memory_stack(hub, tmp_path, runtimes=[DockerRuntime(url=dockerd.url)]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    assert result.state is RunState.SUCCEEDED, result
    cpu, memory = (Path(result["small"].workdir) / "limits.txt").read_text().splitlines()
    quota, period = (int(x) for x in cpu.split())
    assert quota / period == pytest.approx(0.5)
    assert int(memory) == 64 * 2**20


async def test_timeout_stops_and_removes_the_container(
    dockerd: Dockerd, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    runtime = DockerRuntime(url=dockerd.url)
    try:
        command = "echo started; printf 'no newline \\000' >&2; sleep 60"
        outcome = await runtime.run(_execution(tmp_path, command, run="tmo", timeout=1.0))
    finally:
        await runtime.aclose()
    assert outcome.status is ResultStatus.TIMEOUT and "timeout" in outcome.error
    assert outcome.exit_code != 0
    assert (tmp_path / "work" / ".dagon" / "stdout").read_text() == "started\n"
    # a last line without a newline is not lost (the engine's json-file log driver
    # stores text: invalid UTF-8 would come back as U+FFFD, NUL survives)
    assert (tmp_path / "work" / ".dagon" / "stderr").read_bytes() == b"no newline \x00"
    assert await _containers_of(docker, "tmo") == []


async def test_cancel_stops_and_removes_the_container(
    dockerd: Dockerd, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    runtime = DockerRuntime(url=dockerd.url)
    try:
        task = asyncio.ensure_future(runtime.run(_execution(tmp_path, "sleep 60", run="cxl")))
        async with asyncio.timeout(30):
            while not (ids := await _containers_of(docker, "cxl")):
                await asyncio.sleep(0.05)
            while (await docker.containers.get(ids[0]))["State"]["Status"] != "running":
                await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await runtime.aclose()
    assert await _containers_of(docker, "cxl") == []
    with pytest.raises(aiodocker.DockerError) as info:
        await docker.containers.get(ids[0])
    assert info.value.status == 404


async def test_missing_image_with_pull_never_is_an_error(dockerd: Dockerd, tmp_path: Path) -> None:
    runtime = DockerRuntime(url=dockerd.url)
    try:
        ex = _execution(tmp_path, "true", run="img")
        ex.assignment.runtime_options.update(image="dagon-test/absent:1", pull="never")
        outcome = await runtime.run(ex)
    finally:
        await runtime.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert "dagon-test/absent:1" in outcome.error and "never" in outcome.error


async def test_reuse_runs_short_tasks_in_one_long_lived_container(
    dockerd: Dockerd, docker: aiodocker.Docker, hub: MemoryHub, tmp_path: Path
) -> None:
    wf = dagon.Workflow("reuse")
    wf.container("a", image=BUSYBOX_IMAGE, reuse=True, command="hostname > host.txt; echo 1 > n.txt")
    wf.container("b", image=BUSYBOX_IMAGE, reuse=True, env={"ADD": "1"},
                 command="hostname > host.txt; echo $(( $(cat workflow:///a/n.txt) + ADD )) > n.txt")  # fmt: skip
    wf.container("c", image=BUSYBOX_IMAGE, reuse=True, command="hostname > host.txt; cat workflow:///b/n.txt; exit 5")
    runtime = DockerRuntime(url=dockerd.url, scratch_root=tmp_path / "agent0" / "scratch")
    async with memory_stack(hub, tmp_path, runtimes=[runtime]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
        pooled = await docker.containers.list(all=True, filters={"label": ["dagon.reuse=1"]})
        assert len(pooled) == 1
    hosts = {(Path(result[t].workdir) / "host.txt").read_text() for t in "abc"}
    assert len(hosts) == 1 and pooled[0].id.startswith(hosts.pop().strip())
    assert (Path(result["b"].workdir) / "n.txt").read_text() == "2\n"
    c = result["c"]
    assert c.state is TaskState.FAILED and c.exit_code == 5
    assert (Path(c.workdir) / ".dagon" / "stdout").read_text() == "2\n"
    # the runtime's close removed the pool
    assert await docker.containers.list(all=True, filters={"label": ["dagon.reuse=1"]}) == []


async def test_reuse_timeout_removes_the_container(dockerd: Dockerd, docker: aiodocker.Docker, tmp_path: Path) -> None:
    runtime = DockerRuntime(url=dockerd.url, scratch_root=tmp_path)
    try:
        outcome = await runtime.run(_execution(tmp_path, "sleep 60", run="rt", timeout=0.5, reuse=True))
        assert outcome.status is ResultStatus.TIMEOUT
        assert await docker.containers.list(all=True, filters={"label": ["dagon.reuse=1"]}) == []
        task = asyncio.ensure_future(runtime.run(_execution(tmp_path / "c", "echo up; sleep 60", run="rc", reuse=True)))
        async with asyncio.timeout(30):
            out = tmp_path / "c" / "work" / ".dagon" / "stdout"
            while not out.exists() or not out.read_bytes():
                await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await docker.containers.list(all=True, filters={"label": ["dagon.reuse=1"]}) == []
        rootless = DockerRuntime(url=dockerd.url)
        try:
            refused = await rootless.run(_execution(tmp_path / "x", "true", run="rt", reuse=True))
        finally:
            await rootless.aclose()
        assert refused.status is ResultStatus.ERROR and "scratch root" in refused.error
    finally:
        await runtime.aclose()


async def test_missing_image_is_pulled_and_a_failed_pull_is_an_error(dockerd: Dockerd, tmp_path: Path) -> None:
    # A registry on a closed loopback port: the pull is really attempted (no traffic leaves the host).
    runtime = DockerRuntime(url=dockerd.url)
    try:
        ex = _execution(tmp_path, "true", run="pull")
        ex.assignment.runtime_options.update(image="127.0.0.1:1/dagon/absent:1")
        outcome = await runtime.run(ex)
    finally:
        await runtime.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert "pulling image '127.0.0.1:1/dagon/absent:1' failed" in outcome.error, outcome.error
    assert "connection refused" in outcome.error


async def test_symlink_staged_inputs_resolve_inside_the_container(
    dockerd: Dockerd, hub: MemoryHub, tmp_path: Path
) -> None:
    wf = dagon.Workflow("links")
    wf.container("make", image=BUSYBOX_IMAGE, command="mkdir d && echo linked > d/x.txt")
    wf.container("use", image=BUSYBOX_IMAGE, stage_mode="symlink",
                 command="cat workflow:///make/d/x.txt > y.txt && ! touch workflow:///make/d/x.txt")  # fmt: skip
    async with memory_stack(hub, tmp_path, runtimes=[DockerRuntime(url=dockerd.url)]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    assert result.state is RunState.SUCCEEDED, result["use"].stderr_tail
    use = Path(result["use"].workdir)
    assert any(p.is_symlink() for p in await asyncio.to_thread(lambda: list(use.rglob("x.txt"))))
    # the producer's directory is visible read-only: the consumer cannot change its input
    assert (use / "y.txt").read_text() == "linked\n"


async def test_a_dagonstar_docker_script_runs_in_real_containers(
    dockerd: Dockerd, hub: MemoryHub, tmp_path: Path
) -> None:
    """DAGonStar's TaskType.DOCKER with its original options (image, volume, remove, pull)."""
    from dagon.task import DagonTask, TaskType

    wf = dagon.Workflow("DataFlow-Docker", config={})
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "seed.txt").write_text("seed\n")
    a = DagonTask(
        TaskType.DOCKER, "A", "cat /shared/seed.txt > a.txt; echo from-A >> a.txt", image=BUSYBOX_IMAGE,
        volume=f"{tmp_path / 'shared'}:/shared:ro", remove=True, pull=False,
    )  # fmt: skip
    b = DagonTask(TaskType.DOCKER, "B", "cat workflow:///A/a.txt > b.txt", image=BUSYBOX_IMAGE, remove=True)
    wf.add_task(a)
    wf.add_task(b)
    wf.make_dependencies()
    async with memory_stack(hub, tmp_path, runtimes=[DockerRuntime(url=dockerd.url)]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    assert result.state is RunState.SUCCEEDED, result.cause
    assert (Path(result["B"].workdir) / "b.txt").read_text() == "seed\nfrom-A\n"
