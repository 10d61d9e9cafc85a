"""Cloud and SSH tasks end to end through ``dagon run FILE.py --broker`` and a ``dagon-agent`` process.

Real components: Mosquitto, a ``dagon-agent --runtimes cloud,ssh,process`` process, moto's
EC2 server behind the bridging proxy (an *emulation* of the AWS API: ``tests/_moto.py``)
and OpenSSH's sshd on its own address in a network namespace, which stands in for the
instance and is also the ``ip=`` host. The workflow creates the instance, runs a task on
it, stages its output to an SSH task and back to a local task, then destroys the
instance. Wrong configurations (credentials the agent does not hold, an unreachable host)
end the run with one line that names what to fix.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from _moto import MotoEc2, moto_ec2
from _sshd import RemoteHost, namespaced_sshd
from compat._scripts import DAGON, environ, start_agent, write

pytestmark = [pytest.mark.cloud, pytest.mark.ssh, pytest.mark.mosquitto]

SECRETS = {"DAGON_SECRET_EC2_KEY": "AKIAEXAMPLEKEY000000", "DAGON_SECRET_EC2_SECRET": "wJalrXUtnFEMIK7MDENGbPxRfiCY"}


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteHost]:
    with namespaced_sshd(tmp_path) as host:
        yield host


@pytest.fixture
async def ec2(tmp_path: Path, remote: RemoteHost) -> AsyncIterator[MotoEc2]:
    async with moto_ec2(tmp_path, remote.address) as emulation:
        yield emulation


def workflow(
    tmp: Path, remote: RemoteHost, ec2: MotoEc2, *, name: str, key: str = "EC2", ssh_port: int = 22,
    ssh_key: Path | None = None,
) -> Path:  # fmt: skip
    cloud = {
        "provider": "ec2", "region": "us-east-1", "api_url": ec2.endpoint,
        "credentials": {"key": f"secret://{key}_KEY", "secret": f"secret://{key}_SECRET"},
        "instance_flavour": {"image": "ami-12c6146b", "size": "t2.micro"}, "instance_name": f"dagon-{name}",
        "key_options": {"key_path": str(remote.client_key)}, "ssh_username": "root",
        "host_key": remote.host_key.export_public_key().decode().strip(),
        "remote_scratch": str(remote.work / "remote-scratch"), "boot_timeout": 60, "destroy_instance": True,
    }  # fmt: skip
    keypath = str(ssh_key or remote.client_key)
    ssh = {"ip": remote.address, "ssh_username": "root", "keypath": keypath, "ssh_port": ssh_port}
    return write(
        tmp / f"{name}.py",
        "import dagon\nfrom dagon.core import Task\n"
        f"wf = dagon.Workflow({name!r})\n"
        "wf.add(Task(name='simulate', command='seq 1 500 > field.txt; hostname -I > where.txt', runtime='cloud',"
        f" runtime_options={cloud!r}))\n"
        "wf.add(Task(name='post', command='sort -rn workflow:///simulate/field.txt | head -2 > top.txt',"
        f" runtime='ssh', runtime_options={ssh!r}))\n"
        "wf.add(Task(name='report', command='cat workflow:///post/top.txt workflow:///simulate/where.txt"
        " > report.txt'))\n",
    )


async def dagon_run(script: Path, broker: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    # In a thread: the moto proxy answers from this test's event loop meanwhile. A wide terminal:
    # the summary table then shows each task's error on one line, as a person reads it.
    env = environ(tmp / "client") | {"COLUMNS": "400"}
    return await asyncio.to_thread(
        subprocess.run, [*DAGON, "run", str(script), "--broker", broker], cwd=tmp, env=env, capture_output=True,
        text=True, timeout=180, check=False,
    )  # fmt: skip


def cloud_agent(mosquitto: Any, remote: RemoteHost, tmp: Path, coordinator_home: Path) -> subprocess.Popen[bytes]:
    """A ``dagon-agent --runtimes cloud,ssh,process`` holding the EC2 secrets, enrolled and approved."""
    import os

    saved = dict(os.environ)
    os.environ.update(SECRETS, DAGON_SSH_KNOWN_HOSTS=str(remote.known_hosts))  # start_agent passes it on
    try:
        return start_agent(mosquitto.url, tmp / "agent", "cloud-agent", coordinator_home=coordinator_home,
                           extra=("--runtimes", "cloud,ssh,process"))  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(saved)


def check_report(tmp: Path, remote: RemoteHost, ec2: MotoEc2) -> None:
    report = next((tmp / "agent" / "scratch").glob("*/report-*/report.txt")).read_text().split()
    assert report[:2] == ["500", "499"]
    assert remote.address in report[2:]  # the "instance" is the namespaced host
    assert ec2.requests.count("RunInstances") == 1 and "TerminateInstances" in ec2.requests
    assert list((remote.work / "remote-scratch").iterdir()) == []


async def test_dagon_run_creates_uses_and_destroys_an_instance(
    mosquitto: Any, remote: RemoteHost, ec2: MotoEc2, tmp_path: Path
) -> None:
    agent = cloud_agent(mosquitto, remote, tmp_path, tmp_path / "client")
    try:
        out = await dagon_run(workflow(tmp_path, remote, ec2, name="cloud-e2e"), mosquitto.url, tmp_path)
        log = (tmp_path / "agent" / "agent.log").read_text()
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:] + log[-3000:]
        check_report(tmp_path, remote, ec2)
        assert SECRETS["DAGON_SECRET_EC2_SECRET"] not in out.stdout + out.stderr + log

        # Credentials the agent does not hold: one line naming the secret, nothing created.
        before = ec2.requests.count("RunInstances")
        bad = await dagon_run(workflow(tmp_path, remote, ec2, name="no-creds", key="OTHER"), mosquitto.url, tmp_path)
        assert bad.returncode != 0
        line = next(x for x in (bad.stdout + bad.stderr).splitlines() if "OTHER_KEY" in x)
        assert "set DAGON_SECRET_OTHER_KEY" in line and "to its secrets file" in line, bad.stdout + bad.stderr
        assert ec2.requests.count("RunInstances") == before

        # Credentials the provider refuses (moto checking signatures against its IAM users: none).
        (tmp_path / "strict").mkdir()
        async with moto_ec2(tmp_path / "strict", remote.address, check_credentials=True) as strict:
            refused = await dagon_run(workflow(tmp_path, remote, strict, name="refused"), mosquitto.url, tmp_path)
        assert refused.returncode != 0
        line = next(x for x in (refused.stdout + refused.stderr).splitlines() if "refused the credentials" in x)
        assert "cloud: ec2 refused the credentials: check the secrets named in credentials=" in line

        # An unreachable ip= host (nothing listens on that port): one line naming host and port.
        down = await dagon_run(workflow(tmp_path, remote, ec2, name="down", ssh_port=2299), mosquitto.url, tmp_path)
        assert down.returncode != 0
        line = next(x for x in (down.stdout + down.stderr).splitlines() if f"{remote.address}:2299" in x)
        assert "cannot reach" in line and "check ip= / ssh_port=" in line, down.stdout + down.stderr

        # A key the host does not accept: one line naming the key and where it must be authorized.
        import asyncssh

        wrong = tmp_path / "wrong_key"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong))
        refused = await dagon_run(workflow(tmp_path, remote, ec2, name="wrong-key", ssh_key=wrong), mosquitto.url,
                                  tmp_path)  # fmt: skip
        assert refused.returncode != 0
        line = next(x for x in (refused.stdout + refused.stderr).splitlines() if f"refused the key {wrong}" in x)
        assert "authorized_keys" in line, refused.stdout + refused.stderr
    finally:
        stop_process(agent)


async def test_dagon_submit_runs_it_on_a_standalone_coordinator_and_agent(
    mosquitto: Any, remote: RemoteHost, ec2: MotoEc2, tmp_path: Path
) -> None:
    client, coord_home = tmp_path / "client", tmp_path / "coord"
    for args, where in ((("keys", "init"), coord_home), (("keys", "client"), client),
                        (("keys", "trust-coordinator", str(coord_home / "keys" / "coordinator.pub")), client),
                        (("keys", "trust-client", str(client / "keys" / "client.pub")), coord_home)):  # fmt: skip
        done = await asyncio.to_thread(subprocess.run, [*DAGON, *args], env=environ(where), capture_output=True,
                                       text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
    coord = subprocess.Popen([*DAGON, "coordinator", "--broker", mosquitto.url], env=environ(coord_home),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    agent = cloud_agent(mosquitto, remote, tmp_path, coord_home)
    try:
        async with asyncio.timeout(60):  # the agent is approved and online before the run is handed over
            while "cloud-agent" not in (await asyncio.to_thread(
                subprocess.run, [*DAGON, "agents", "--json", "--broker", mosquitto.url], env=environ(client),
                capture_output=True, text=True, timeout=60, check=False,
            )).stdout:  # fmt: skip
                await asyncio.sleep(0.3)
        script = workflow(tmp_path, remote, ec2, name="cloud-submit")
        out = await asyncio.to_thread(
            subprocess.run, [*DAGON, "submit", str(script), "--broker", mosquitto.url, "--wait"], cwd=tmp_path,
            env=environ(client), capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        log = (tmp_path / "agent" / "agent.log").read_text()
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:] + log[-3000:]
        check_report(tmp_path, remote, ec2)
    finally:
        stop_process(agent)
        stop_process(coord)
