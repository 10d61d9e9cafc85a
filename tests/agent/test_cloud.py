"""The cloud runtime: libcloud against moto's EC2 emulation, a namespaced sshd standing in for the instance.

Emulated: no cloud is reachable here. The provider calls (RunInstances, DescribeInstances,
StartInstances, StopInstances, TerminateInstances) are real libcloud calls answered by
moto; the "instance" the task then runs on over SSH is a network-namespace host.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _moto import MotoEc2, moto_ec2
from _sshd import RemoteHost, namespaced_sshd

from dagon.agent.runtimes import Execution
from dagon.agent.runtimes._cloud import CloudRuntime
from dagon.agent.runtimes._ssh import SshRuntime
from dagon.protocol import ResultStatus, RunId, TaskAssignment, TaskName

from ._support import wait_gone

pytestmark = pytest.mark.cloud

SECRETS = {"AWS_KEY": "AKIAEXAMPLEKEY000000", "AWS_SECRET": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteHost]:
    with namespaced_sshd(tmp_path) as host:
        yield host


@pytest.fixture
async def ec2(tmp_path: Path, remote: RemoteHost) -> AsyncIterator[MotoEc2]:
    async with moto_ec2(tmp_path, remote.address) as emulation:
        yield emulation


def resolve(text: str) -> str:
    for name, value in SECRETS.items():
        text = text.replace(f"secret://{name}", value)
    if "secret://" in text:
        raise ValueError(f"secret in {text!r} is not defined on this agent")
    return text


def execution(tmp: Path, command: str, *, task: str = "t", **options: Any) -> Execution:
    workdir = tmp / "scratch" / "run" / f"{task}-1"
    (workdir / ".dagon").mkdir(parents=True)
    a = TaskAssignment(RunId("run"), "wf", TaskName(task), 1, "cloud", command, runtime_options=dict(options))
    return Execution(a, command, workdir, {}, workdir / ".dagon" / "stdout", workdir / ".dagon" / "stderr",
                     resolve=resolve)  # fmt: skip


def cloud_options(remote: RemoteHost, ec2: MotoEc2, **extra: Any) -> dict[str, Any]:
    """DAGonStar's CLOUD option names, plus where the (emulated) API is and the credentials."""
    public = remote.host_key.export_public_key().decode().strip()
    return {
        "provider": "ec2", "region": "us-east-1", "api_url": ec2.endpoint, "endpoint": "globus-id-ignored",
        "credentials": {"key": "secret://AWS_KEY", "secret": "secret://AWS_SECRET"},
        "instance_flavour": {"image": "ami-12c6146b", "size": "t2.micro"},
        "key_options": {"key_path": str(remote.client_key)}, "ssh_username": "root", "host_key": public,
        "remote_scratch": str(remote.work / "remote-scratch"), "boot_timeout": 60, **extra,
    }  # fmt: skip


def runtime(tmp: Path, remote: RemoteHost) -> CloudRuntime:
    return CloudRuntime(ssh=SshRuntime(known_hosts=remote.known_hosts), state=tmp / "home" / "cloud-instances.json")


async def states(ec2: MotoEc2) -> dict[str, str]:
    """Instance id -> state, asked of moto directly (libcloud, not through the runtime)."""
    from libcloud.compute.providers import get_driver

    def ask() -> dict[str, str]:
        port = int(ec2.moto_url.rsplit(":", 1)[1])
        driver = get_driver("ec2")(SECRETS["AWS_KEY"], SECRETS["AWS_SECRET"], region="us-east-1", host="127.0.0.1",
                                   port=port, secure=False, signature_version="4")  # fmt: skip
        body = driver.connection.request("/", params={"Action": "DescribeInstances"}).body  # type: ignore[no-untyped-call]
        import re

        ids = re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", body)
        names = re.findall(r"<instanceState><code>\d+</code><name>(\w+)</name>", body)
        return dict(zip(ids, names, strict=True))

    return await asyncio.to_thread(ask)


async def test_create_run_stop_then_reuse_and_destroy(tmp_path: Path, remote: RemoteHost, ec2: MotoEc2) -> None:
    cloud = runtime(tmp_path, remote)
    first = execution(tmp_path, "uname -s > os.txt; echo hi", task="a",
                      **cloud_options(remote, ec2, instance_name="dagon-test-vm", stop_instance=True))  # fmt: skip
    outcome = await cloud.run(first)
    assert outcome.status is ResultStatus.SUCCEEDED, outcome
    assert (first.workdir / "os.txt").read_text() == "Linux\n"
    assert list((await states(ec2)).values()) == ["stopped"]  # stop_instance
    # The next task names the same instance: it is started again, not created anew.
    second = execution(tmp_path, "exit 4", task="b",
                       **cloud_options(remote, ec2, instance_name="dagon-test-vm", destroy_instance=True))  # fmt: skip
    outcome = await cloud.run(second)
    await cloud.aclose()
    assert outcome.status is ResultStatus.FAILED and outcome.exit_code == 4
    assert ec2.requests.count("RunInstances") == 1
    assert "StartInstances" in ec2.requests
    assert list((await states(ec2)).values()) == ["terminated"]  # destroy_instance, created by dagon
    assert (tmp_path / "home" / "cloud-instances.json").read_text().strip() == "{}"
    assert SECRETS["AWS_SECRET"] not in repr(cloud)


async def test_an_instance_given_by_id_is_never_destroyed(tmp_path: Path, remote: RemoteHost, ec2: MotoEc2) -> None:
    cloud = runtime(tmp_path, remote)
    made = await cloud.run(execution(tmp_path, "true", task="make", **cloud_options(remote, ec2)))
    assert made.status is ResultStatus.SUCCEEDED, made
    (instance,) = (await states(ec2)).keys()
    outcome = await cloud.run(
        execution(
            tmp_path, "true", task="use", **cloud_options(remote, ec2, instance_id=instance, destroy_instance=True)
        )
    )
    await cloud.aclose()
    assert outcome.status is ResultStatus.SUCCEEDED
    assert ec2.requests.count("RunInstances") == 1
    # Created by this agent (recorded), so destroy_instance applies even when named by id.
    assert (await states(ec2))[instance] == "terminated"


async def test_an_unknown_instance_host_key_is_refused(tmp_path: Path, remote: RemoteHost, ec2: MotoEc2) -> None:
    cloud = CloudRuntime(ssh=SshRuntime(known_hosts=tmp_path / "empty"), state=tmp_path / "state.json")
    (tmp_path / "empty").write_text("")
    options = cloud_options(remote, ec2)
    del options["host_key"]
    outcome = await cloud.run(execution(tmp_path, "true", **options))
    await cloud.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert remote.host_key.get_fingerprint("sha256") in outcome.error and "never auto-accepted" in outcome.error


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"credentials": {"key": "secret://AWS_KEY", "secret": "secret://NOPE"}}, "not defined"),
        ({"credentials": {"key": "AKIA", "secret": "plaintext"}}, "must be secret://NAME placeholders"),
        ({"provider": "nosuchcloud"}, "not a libcloud compute provider"),
        ({"instance_flavour": None}, "instance_flavour"),
        ({"flavour": {}}, "unknown cloud option"),
    ],
)
async def test_wrong_configuration_is_a_one_line_error(
    tmp_path: Path, remote: RemoteHost, ec2: MotoEc2, change: dict[str, Any], message: str
) -> None:
    cloud = runtime(tmp_path, remote)
    outcome = await cloud.run(execution(tmp_path, "true", **{**cloud_options(remote, ec2), **change}))
    await cloud.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert message in outcome.error and "\n" not in outcome.error
    assert SECRETS["AWS_SECRET"] not in outcome.error
    assert "RunInstances" not in ec2.requests


async def test_an_instance_without_ssh_times_out_booting(tmp_path: Path, remote: RemoteHost, ec2: MotoEc2) -> None:
    cloud = runtime(tmp_path, remote)
    outcome = await cloud.run(execution(tmp_path, "true", **cloud_options(remote, ec2, ssh_port=2299,
                                                                             boot_timeout=2)))  # fmt: skip
    await cloud.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert "not reachable over SSH" in outcome.error and "boot_timeout" in outcome.error


async def test_refused_credentials_are_a_one_line_error(tmp_path: Path, remote: RemoteHost) -> None:
    async with moto_ec2(tmp_path, remote.address, check_credentials=True) as strict:
        cloud = runtime(tmp_path, remote)
        outcome = await cloud.run(execution(tmp_path, "true", **cloud_options(remote, strict)))
        await cloud.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert outcome.error == "cloud: ec2 refused the credentials: check the secrets named in credentials="
    assert "RunInstances" not in strict.requests


async def test_a_timeout_kills_the_task_on_the_instance_and_still_stops_it(
    tmp_path: Path, remote: RemoteHost, ec2: MotoEc2
) -> None:
    cloud = runtime(tmp_path, remote)
    ex = execution(tmp_path, f"sleep 300 & echo $$ $! > {tmp_path / 'pids'}; wait", **cloud_options(remote, ec2,
                   stop_instance=True))  # fmt: skip
    ex = Execution(dataclasses.replace(ex.assignment, timeout=4), ex.command, ex.workdir, ex.env, ex.stdout,
                   ex.stderr, resolve=resolve)  # fmt: skip
    outcome = await cloud.run(ex)
    await cloud.aclose()
    assert outcome.status is ResultStatus.TIMEOUT
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    await wait_gone(*pids)
    assert list((await states(ec2)).values()) == ["stopped"]
