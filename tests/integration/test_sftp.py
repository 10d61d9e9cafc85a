"""Staging over SFTP from a producer reachable only by SSH: a real OpenSSH sshd on loopback."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from _broker import free_port, missing, stop_process
from _keys import coordinator_security

import dagon
from dagon.core import Coordinator, RunState
from dagon.protocol.transport import MemoryHub

from ._stack import hub_agent as agent

SSHD_MISSING = "OpenSSH server (sshd) not installed; run .ci/setup"


@dataclass
class Sshd:
    port: int
    client_key: Path
    known_hosts: Path


def sshd_binary() -> str | None:
    return shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    binary = sshd_binary()
    if binary is None:
        missing(SSHD_MISSING)
    work = tmp_path / "sshd"
    work.mkdir()
    host = asyncssh.generate_private_key("ssh-ed25519")
    host.write_private_key(str(work / "host_key"))
    os.chmod(work / "host_key", 0o600)
    client = asyncssh.generate_private_key("ssh-ed25519")
    client.write_private_key(str(work / "client_key"))
    client.write_public_key(str(work / "authorized_keys"))
    port = free_port()
    (work / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {work / 'host_key'}\nUsePAM no\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nAuthorizedKeysFile {work / 'authorized_keys'}\n"
        f"PidFile {work / 'sshd.pid'}\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n"
    )
    host_line = host.export_public_key().decode().split()
    (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_line[0]} {host_line[1]}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    with (work / "sshd.log").open("wb") as log:
        proc = subprocess.Popen([binary, "-D", "-e", "-f", str(work / "sshd_config")], stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"sshd did not start: {(work / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.05)
        yield Sshd(port, work / "client_key", work / "known_hosts")
    finally:
        stop_process(proc)


async def run_two_hosts(tmp: Path, ssh: Sshd, known_hosts: Path, layout: str = "run") -> dagon.RunResult:
    hub = MemoryHub()
    wf = dagon.Workflow("hpc")
    wf.shell(
        "simulate", "mkdir out && head -c 1500000 /dev/urandom > out/field.bin && echo meta > out/m.txt", agent="login"
    )
    wf.shell("plot", "sha256sum < workflow:///simulate/out/field.bin | cut -c1-64 > d.txt", agent="laptop")
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(connect=lambda will: hub.transport(will=will), coordinator_id="c", **coordinator_security())
        )
        login = agent(
            hub, tmp, "login", host_id="hpc-login", serve_data=False,
            ssh_url=f"ssh://{getpass.getuser()}@127.0.0.1:{ssh.port}", scratch_layout=layout,
        )  # fmt: skip
        await stack.enter_async_context(login)
        assert login.capabilities.data_url == ""  # no HTTP data server on this host
        laptop = agent(
            hub, tmp, "laptop", host_id="laptop", ssh_key=str(ssh.client_key), ssh_known_hosts=str(known_hosts)
        )
        await stack.enter_async_context(laptop)
        await coordinator.wait_for_agents(2)
        # keep_scratch: the producer's scratch is read afterwards
        return await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))


@pytest.mark.parametrize("layout", ["run", "dagonstar"])
async def test_inputs_from_an_ssh_only_host_arrive_over_sftp(tmp_path: Path, sshd: Sshd, layout: str) -> None:
    result = await run_two_hosts(tmp_path, sshd, sshd.known_hosts, layout)
    assert result.state is RunState.SUCCEEDED, result.cause
    if layout == "dagonstar":  # DAGonStar's <epoch ms>-<task>, found through the producer root's record
        assert Path(result["simulate"].workdir).parent == tmp_path / "login" / "scratch"
        assert Path(result["simulate"].workdir).name.endswith("-simulate")
    field = (Path(result["simulate"].workdir) / "out" / "field.bin").read_bytes()
    assert (Path(result["plot"].workdir) / "d.txt").read_text() == hashlib.sha256(field).hexdigest() + "\n"
    assert "from login over sftp" in result["plot"].cause


async def test_an_unknown_host_key_is_refused_not_accepted(tmp_path: Path, sshd: Sshd) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    result = await run_two_hosts(tmp_path, sshd, empty)
    assert result.state is RunState.FAILED
    assert "never auto-accepted" in result["plot"].cause
    assert empty.read_text() == ""  # nothing was added behind the user's back
