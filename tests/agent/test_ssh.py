"""The SSH runtime against a real OpenSSH sshd on its own address in a network namespace."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from _broker import stop_process
from _sshd import RemoteHost, namespaced_sshd, sshd_binary, start_sshd

from dagon.agent.runtimes import Execution
from dagon.agent.runtimes._ssh import SshRuntime
from dagon.protocol import ResultStatus, RunId, TaskAssignment, TaskName

from ._support import wait_gone

pytestmark = pytest.mark.ssh


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteHost]:
    with namespaced_sshd(tmp_path) as host:
        yield host


def execution(
    tmp: Path, command: str, *, task: str = "t", timeout: float | None = None, **options: object
) -> Execution:
    workdir = tmp / "scratch" / "run" / f"{task}-1"
    (workdir / ".dagon").mkdir(parents=True)
    a = TaskAssignment(
        run=RunId("run"), workflow="wf", task=TaskName(task), attempt=1, runtime="ssh", command=command,
        timeout=timeout, runtime_options=dict(options),
    )  # fmt: skip
    env = {"DAGON_WORKDIR": str(workdir), "GREETING": "it's me"}
    return Execution(a, command, workdir, env, workdir / ".dagon" / "stdout", workdir / ".dagon" / "stderr")


def runtime(host: RemoteHost, **kwargs: object) -> SshRuntime:
    return SshRuntime(known_hosts=host.known_hosts, keepalive=1.0, **kwargs)  # type: ignore[arg-type]


def options(host: RemoteHost, **extra: object) -> dict[str, Any]:
    """DAGonStar's names for the remote host (``ip=``, ``ssh_username=``, ``keypath=``)."""
    scratch = str(host.work / "remote-scratch")
    return {"ip": host.address, "ssh_username": "root", "keypath": str(host.client_key), "remote_scratch": scratch,
            **extra}  # fmt: skip


async def test_staging_both_ways_exit_code_and_remote_cleanup(remote: RemoteHost, tmp_path: Path) -> None:
    # The command is set below: the staged input's local path, rewritten to the remote one.
    ex = execution(tmp_path, "", **options(remote, remote_scratch=str(tmp_path / "remote-scratch")))
    produced = tmp_path / "scratch" / "run" / "A-1" / "data.txt"  # the producer's directory, same scratch root
    produced.parent.mkdir()
    produced.write_text("1\n2\n3\n")
    staged = ex.workdir / ".dagon" / "inputs" / "wf" / "A" / "data.txt"
    staged.parent.mkdir(parents=True)
    staged.symlink_to(produced)  # staged by symlink on the agent's host: its content travels
    command = (
        f'mkdir -p out && wc -l < {staged} > out/lines.txt && echo "$GREETING" > greeting.txt'
        ' && ln -s /etc/passwd link && echo done && echo warn >&2 && test "$DAGON_WORKDIR" = "$PWD"'
    )
    ex = Execution(ex.assignment, command, ex.workdir, ex.env, ex.stdout, ex.stderr)
    ssh = runtime(remote)
    outcome = await ssh.run(ex)
    await ssh.aclose()
    assert outcome.status is ResultStatus.SUCCEEDED, outcome
    assert outcome.exit_code == 0
    assert (ex.workdir / "out" / "lines.txt").read_text() == "3\n"
    assert (ex.workdir / "greeting.txt").read_text() == "it's me\n"
    assert not (ex.workdir / "link").exists()  # symlinks are not brought back
    assert ex.stdout.read_text() == "done\n" and outcome.stderr_tail == "warn\n"
    assert list((tmp_path / "remote-scratch").iterdir()) == []  # the remote scratch is gone (its run dir too)


async def test_links_leading_outside_the_scratch_root_are_not_uploaded(remote: RemoteHost, tmp_path: Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("agent-only data")
    scratch = tmp_path / "remote-scratch"
    ex = execution(tmp_path, "ls -R .dagon/inputs > listing.txt; cat .dagon/inputs/wf/A/* > seen.txt || true",
                   **options(remote, remote_scratch=str(scratch)))  # fmt: skip
    staged = ex.workdir / ".dagon" / "inputs" / "wf" / "A"
    staged.mkdir(parents=True)
    (staged / "leak.txt").symlink_to(secret)
    (staged / "etc").symlink_to("/etc")
    (staged / "loop").symlink_to(staged)
    ssh = runtime(remote)
    outcome = await ssh.run(ex)
    await ssh.aclose()
    assert outcome.status is ResultStatus.SUCCEEDED, outcome
    assert "agent-only data" not in (ex.workdir / "seen.txt").read_text()
    assert "passwd" not in (ex.workdir / "listing.txt").read_text()


async def test_a_failing_command_returns_its_exit_code(remote: RemoteHost, tmp_path: Path) -> None:
    ssh = runtime(remote)
    outcome = await ssh.run(execution(tmp_path, "echo broken >&2; exit 5", **options(remote)))
    await ssh.aclose()
    assert outcome.status is ResultStatus.FAILED
    assert outcome.exit_code == 5
    assert outcome.stderr_tail == "broken\n"


async def _remote_pids(tmp_path: Path) -> tuple[int, int]:
    pid_file = tmp_path / "pids"
    async with asyncio.timeout(20):
        while not pid_file.exists() or len(pid_file.read_text().split()) < 2:
            await asyncio.sleep(0.05)
    leader, child = pid_file.read_text().split()[:2]
    return int(leader), int(child)


def _long_task(tmp_path: Path) -> str:
    # The leader ignores SIGTERM and leaves a background child: the whole group must go.
    return f"trap '' TERM; sleep 300 & echo $$ $! > {tmp_path / 'pids'}; wait; sleep 300"


async def test_a_timeout_kills_the_remote_process_group(remote: RemoteHost, tmp_path: Path) -> None:
    ssh = runtime(remote)
    outcome = await ssh.run(execution(tmp_path, _long_task(tmp_path), timeout=3, **options(remote)))
    await ssh.aclose()
    assert outcome.status is ResultStatus.TIMEOUT
    assert "timeout" in outcome.error
    await wait_gone(*await _remote_pids(tmp_path))


async def test_cancelling_twice_kills_the_remote_group_and_cleans_up(remote: RemoteHost, tmp_path: Path) -> None:
    ssh = runtime(remote)
    scratch = tmp_path / "remote-scratch"
    task = asyncio.create_task(
        ssh.run(execution(tmp_path, _long_task(tmp_path), **options(remote, remote_scratch=str(scratch))))
    )
    pids = await _remote_pids(tmp_path)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ssh.aclose()
    await wait_gone(*pids)
    assert list(scratch.iterdir()) == []


async def test_a_lost_connection_fails_the_task_and_the_remote_group_dies(remote: RemoteHost, tmp_path: Path) -> None:
    ssh = runtime(remote)
    task = asyncio.create_task(ssh.run(execution(tmp_path, _long_task(tmp_path), **options(remote))))
    pids = await _remote_pids(tmp_path)
    subprocess.run(["ip", "link", "set", remote.bridge_port, "down"], check=True)
    try:
        outcome = await task
    finally:
        subprocess.run(["ip", "link", "set", remote.bridge_port, "up"], check=True)
        await ssh.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert "lost" in outcome.error, outcome
    await wait_gone(*pids, within=30)  # sshd notices (ClientAliveInterval) and closes the channel


async def test_an_unknown_host_key_is_refused_naming_its_fingerprint(remote: RemoteHost, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    ssh = SshRuntime(known_hosts=tmp_path / "empty")
    outcome = await ssh.run(execution(tmp_path, "true", **options(remote)))
    await ssh.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert remote.host_key.get_fingerprint("sha256") in outcome.error
    assert "never auto-accepted" in outcome.error and "\n" not in outcome.error
    assert (tmp_path / "empty").read_text() == ""


async def test_a_changed_host_key_is_refused(remote: RemoteHost, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    (tmp_path / "kh").write_text(f"{remote.address} {other[0]} {other[1]}\n")
    ssh = SshRuntime(known_hosts=tmp_path / "kh")
    outcome = await ssh.run(execution(tmp_path, "true", **options(remote)))
    await ssh.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert remote.host_key.get_fingerprint("sha256") in outcome.error


async def test_a_wrong_key_is_refused_naming_it(remote: RemoteHost, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong))
    ssh = runtime(remote)
    outcome = await ssh.run(execution(tmp_path, "true", **options(remote, keypath=str(wrong))))
    await ssh.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert f"refused the key {wrong}" in outcome.error and "authorized_keys" in outcome.error


async def test_a_custom_port_and_the_pool_shares_one_connection(remote: RemoteHost, tmp_path: Path) -> None:
    binary = sshd_binary()
    assert binary is not None
    proc = start_sshd(binary, remote.work, remote.namespace, remote.address, 2222)
    try:
        remote.known_hosts.write_text(remote.known_hosts_line(2222))  # only the custom port is known
        ssh = runtime(remote)
        outcomes = await asyncio.gather(
            *(ssh.run(execution(tmp_path, f"echo {i}", task=f"t{i}", **options(remote, ssh_port=2222)))
              for i in range(3))
        )  # fmt: skip
        assert [o.status for o in outcomes] == [ResultStatus.SUCCEEDED] * 3
        assert len(ssh.pool._conns) == 1
        await ssh.aclose()
        ssh = runtime(remote)
        outcome = await ssh.run(execution(tmp_path, "true", task="p22", **options(remote)))  # port 22: unknown key
        await ssh.aclose()
        assert outcome.status is ResultStatus.ERROR and "never auto-accepted" in outcome.error
    finally:
        stop_process(proc)


async def test_an_unreachable_host_is_a_one_line_error(remote: RemoteHost, tmp_path: Path) -> None:
    ssh = runtime(remote)
    outcome = await ssh.run(execution(tmp_path, "true", **options(remote, ssh_port=2299)))
    await ssh.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert outcome.error.startswith(f"ssh: cannot reach {remote.address}:2299") and "\n" not in outcome.error


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({}, "'ip'"),
        ({"ip": "a b"}, "'ip'"),
        ({"ip": "h", "ssh_port": 70000}, "ssh_port"),
        ({"ip": "h", "host": "other"}, "disagree"),
        ({"ip": "h", "passwd": "x"}, "unknown ssh option"),
        ({"ip": "h", "runtime": "kubectl"}, "'slurm', 'kubernetes', 'nomad' tasks, not 'kubectl'"),
        ({"ip": "h", "runtime": "docker"}, "'image' is required"),
        ({"ip": "h", "partition": "debug"}, "unknown ssh option"),
        ({"ip": "h", "runtime": "slurm", "options": {"partitoin": "x"}}, "unknown slurm option"),
    ],
)
async def test_bad_options_are_errors_naming_them(tmp_path: Path, opts: dict[str, Any], message: str) -> None:
    ssh = SshRuntime(known_hosts=tmp_path / "kh")
    outcome = await ssh.run(execution(tmp_path, "true", **opts))
    assert outcome.status is ResultStatus.ERROR and message in outcome.error
    assert os.listdir(tmp_path / "scratch" / "run" / "t-1") == [".dagon"]
