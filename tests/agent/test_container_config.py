"""Pure parts of the container runtimes: the Docker create body, image references, symlinked inputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dagon.agent import Execution
from dagon.agent.runtimes import charliecloud_argv, docker_config
from dagon.agent.runtimes._docker import DockerError, _split_reference
from dagon.protocol import RunId, TaskAssignment, TaskName


def _execution(tmp_path: Path, *, cpus: float = 1.0, memory: int = 0, **options: Any) -> Execution:
    workdir = tmp_path / "scratch" / "r" / "t-1"
    (workdir / ".dagon").mkdir(parents=True, exist_ok=True)
    assignment = TaskAssignment(
        run=RunId("r"), workflow="w", task=TaskName("t"), attempt=1, runtime="docker", command="echo hi",
        cpus=cpus, memory=memory, runtime_options={"image": "local/busybox", **options},
    )  # fmt: skip
    return Execution(
        assignment=assignment, command="echo hi", workdir=workdir, env={"A": "1"},
        stdout=workdir / ".dagon" / "stdout", stderr=workdir / ".dagon" / "stderr",
    )  # fmt: skip


def test_docker_create_body(tmp_path: Path) -> None:
    ex = _execution(
        tmp_path, cpus=1.5, memory=2**27, devices=["/dev/ttyACM0", "/dev/zero:/dev/z:r"], volumes=["/data:/data:ro"],
        network="host", user="1000:1000", gpus="all",
    )  # fmt: skip
    body = docker_config(ex)
    w = str(ex.workdir)
    assert body["Image"] == "local/busybox" and body["WorkingDir"] == w
    assert body["Entrypoint"] == ["/bin/sh", "-c"] and body["Cmd"] == ["echo hi"]
    assert body["Env"] == ["A=1"] and body["User"] == "1000:1000"
    host = body["HostConfig"]
    assert host["Binds"] == [f"{w}:{w}:rw", "/data:/data:ro"]
    assert host["Devices"] == [
        {"PathOnHost": "/dev/ttyACM0", "PathInContainer": "/dev/ttyACM0", "CgroupPermissions": "rwm"},
        {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/z", "CgroupPermissions": "r"},
    ]
    assert (host["NanoCpus"], host["Memory"], host["MemorySwap"]) == (1_500_000_000, 2**27, 2**27)
    assert host["NetworkMode"] == "host" and host["DeviceRequests"][0]["Count"] == -1
    plain = docker_config(_execution(tmp_path / "p"))
    assert plain["User"] == f"{os.getuid()}:{os.getgid()}" and plain["HostConfig"]["NetworkMode"] == "none"
    assert "Memory" not in plain["HostConfig"]
    with pytest.raises(DockerError, match="not SRC:DST"):
        docker_config(_execution(tmp_path / "v", volumes=["/data"]))


def test_symlinked_inputs_are_bound_read_only(tmp_path: Path) -> None:
    producer = tmp_path / "scratch" / "r" / "p-1"
    (producer / "out").mkdir(parents=True)
    (producer / "out" / "x.txt").write_text("x")
    ex = _execution(tmp_path)
    (ex.workdir / "x.txt").symlink_to(producer / "out" / "x.txt")
    (ex.workdir / "out").symlink_to(producer / "out")
    assert docker_config(ex)["HostConfig"]["Binds"][1:] == [f"{producer / 'out'}:{producer / 'out'}:ro"]
    argv, targets = charliecloud_argv(ex)
    assert argv[5:7] == ["-b", str(producer / "out")] and targets[1] == producer / "out"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("registry.local:5000/team/tool", ("registry.local:5000/team/tool", "latest")),
        ("registry.local:5000/team/tool:2", ("registry.local:5000/team/tool", "2")),
        ("busybox@sha256:abc", ("busybox", "sha256:abc")),
    ],
)
def test_image_references(image: str, expected: tuple[str, str]) -> None:
    assert _split_reference(image) == expected
