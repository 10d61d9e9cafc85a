"""``Workflow.container``: a task whose runtime is a container runtime, options checked at build time."""

from __future__ import annotations

from typing import Any

import pytest

import dagon
from dagon.core import Task, ValidationError


def test_container_builds_a_task_with_plain_runtime_options() -> None:
    wf = dagon.Workflow("w")
    wf.shell("a", "echo hi > x")
    task = wf.container(
        "c", image="local/busybox", command="cat workflow:///a/x", devices=["/dev/zero:/dev/z"],
        network="none", timeout=5, cpus=0.5, memory=2**20, env={"K": "v"},
    )  # fmt: skip
    assert task.runtime == "docker"
    assert dict(task.runtime_options) == {"image": "local/busybox", "devices": ["/dev/zero:/dev/z"], "network": "none"}
    assert (task.timeout, task.cpus, task.memory, dict(task.env)) == (5, 0.5, 2**20, {"K": "v"})
    assert wf.graph().deps["c"] == {"a"}
    # plain data: survives the spec round trip
    again = dagon.Workflow.from_dict(wf.to_dict())["c"]
    assert dict(again.runtime_options) == dict(task.runtime_options) and again.runtime == "docker"


@pytest.mark.parametrize(
    ("runtime", "options", "message"),
    [
        ("docker", {"imgae": "x"}, "docker does not understand the option 'imgae'"),
        ("docker", {"binds": ["/a:/a"]}, "option 'binds'"),
        ("charliecloud", {"devices": ["/dev/zero"]}, "charliecloud does not understand the option 'devices'"),
        ("apptainer", {"network": "none"}, "apptainer does not understand the option 'network'"),
        ("docker", {"pull": "sometimes"}, "pull must be one of never, if-missing, always"),
        ("docker", {"devices": "/dev/zero"}, "'devices' must be a list"),
        ("apptainer", {"nv": "yes"}, "nv must be true or false"),
        ("podman", {}, "unknown container runtime 'podman'"),
    ],
)
def test_bad_container_options_name_the_key(runtime: str, options: dict[str, Any], message: str) -> None:
    wf = dagon.Workflow("w")
    with pytest.raises(ValidationError, match=message) as info:
        wf.container("c", image="img", command="true", runtime=runtime, **options)
    assert info.value.tasks == ("c",)
    assert "c" not in wf


def test_image_is_required_and_kubernetes_nomad_options_are_left_to_the_agent() -> None:
    wf = dagon.Workflow("w")
    with pytest.raises(ValidationError, match="needs image="):
        wf.container("c", image=" ", command="true")
    k = wf.container("k", image="busybox", command="true", runtime="kubernetes", node_selector={"zone": "a"})
    n = wf.container("n", image="busybox", command="true", runtime="nomad", driver="docker")
    assert k.runtime_options["node_selector"] == {"zone": "a"} and n.runtime_options["driver"] == "docker"
    assert isinstance(k, Task)
