"""DAGonStar's remote Docker variant: the SSH runtime runs ``docker run`` on the remote host.

The remote host is the namespaced sshd; its Docker engine is the tests' private dockerd
(reached through its unix socket, which the namespace shares with the host).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _containers import Dockerd
from _sshd import RemoteHost, namespaced_sshd

from dagon.agent.runtimes import Execution
from dagon.agent.runtimes._ssh import SshRuntime
from dagon.protocol import ResultStatus, RunId, TaskAssignment, TaskName

pytestmark = [pytest.mark.ssh, pytest.mark.docker]

IMAGE = "dagon-test/busybox"


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteHost]:
    with namespaced_sshd(tmp_path) as host:
        yield host


def execution(tmp: Path, command: str, host: RemoteHost, dockerd: Dockerd, task: str = "t") -> Execution:
    workdir = tmp / "scratch" / "run" / f"{task}-1"
    (workdir / ".dagon").mkdir(parents=True)
    opts = {
        "ip": host.address, "ssh_username": "root", "keypath": str(host.client_key), "runtime": "docker",
        "options": {"image": IMAGE, "network": "none"}, "remote_scratch": str(host.work / "remote-scratch"),
    }  # fmt: skip
    a = TaskAssignment(RunId("run"), "wf", TaskName(task), 1, "ssh", command, runtime_options=opts)
    env = {"DOCKER_HOST": dockerd.url, "WHO": "container"}
    return Execution(a, command, workdir, env, workdir / ".dagon" / "stdout", workdir / ".dagon" / "stderr")


def containers(dockerd: Dockerd) -> str:
    return subprocess.run(
        ["docker", "-H", dockerd.url, "ps", "-a", "--filter", "name=dagon-", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


async def test_a_remote_container_writes_into_the_task_directory(
    dockerd: Dockerd, remote: RemoteHost, tmp_path: Path
) -> None:
    ssh = SshRuntime(known_hosts=remote.known_hosts)
    ex = execution(tmp_path, 'echo "from $WHO" > out.txt; test -f /.dockerenv; exit 6', remote, dockerd)
    outcome = await ssh.run(ex)
    await ssh.aclose()
    assert outcome.status is ResultStatus.FAILED and outcome.exit_code == 6, outcome
    assert (ex.workdir / "out.txt").read_text() == "from container\n"
    assert containers(dockerd) == ""  # --rm


async def test_cancelling_removes_the_remote_container(dockerd: Dockerd, remote: RemoteHost, tmp_path: Path) -> None:
    ssh = SshRuntime(known_hosts=remote.known_hosts)
    task = asyncio.create_task(ssh.run(execution(tmp_path, "sleep 300", remote, dockerd, task="long")))
    async with asyncio.timeout(60):
        while not containers(dockerd):
            await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ssh.aclose()
    async with asyncio.timeout(30):
        while containers(dockerd):
            await asyncio.sleep(0.2)
