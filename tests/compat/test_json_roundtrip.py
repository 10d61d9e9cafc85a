"""as_json() / load_json() / Workflow(jsonload=...) keep every task type, option, mode and edge."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import dagon
from dagon._dagonstar._types import TYPE_OPTIONS
from dagon.task import DagonTask, TaskType

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_-.", min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..")
)
PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(0, 2**31) | st.text(max_size=10),  # negative sizes are refused
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3),
    max_leaves=5,
)
TYPES = sorted(set(TaskType), key=lambda t: t.value)


@st.composite
def workflows(draw: st.DrawFn) -> dagon.Workflow:
    wf = dagon.Workflow("RoundTrip", config={})
    names = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    for i, name in enumerate(names):
        earlier = names[:i]
        refs = draw(st.lists(st.sampled_from(earlier), max_size=2)) if earlier else []
        command = " ; ".join([f"echo {i} > out{i}.txt", *(f"cat workflow:///{r}/out*.txt" for r in refs)])
        if draw(st.booleans()) and i % 3 == 2:
            wf.shell(name, command, env={"K": str(i)}, timeout=float(i + 1), retry=dagon.Retry(attempts=i % 3),
                     labels={"site": "edge"}, outputs=[f"out{i}.txt"], cpus=0.5)  # fmt: skip
            continue
        task_type = draw(st.sampled_from(TYPES))
        if task_type is TaskType.CHECKPOINT:  # DAGonStar: a checkpoint's command lists the files it keeps
            if not refs:
                task_type = TaskType.BATCH
            else:
                command = " ".join(f"workflow:///{r}/out*.txt" for r in refs)
        keys = draw(st.lists(st.sampled_from(TYPE_OPTIONS[task_type]), unique=True)) if TYPE_OPTIONS[task_type] else []
        options: dict[str, Any] = {k: draw(PLAIN) for k in keys}
        if draw(st.booleans()):
            options.update(ip="192.0.2.7", ssh_username="user", keypath="/keys/id", ssh_port=2222)
        task = DagonTask(task_type, name, command, **options)
        wf.add_task(task)
        for dep in draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True)) if earlier else []:
            task.add_dependency_to(wf.find_task_by_name("RoundTrip", dep))  # type: ignore[arg-type]
        if len(refs) > 0 and draw(st.booleans()):
            task.set_mode("parallel")
    wf.make_dependencies()
    return wf


@settings(max_examples=60, deadline=None)
@given(workflows())
def test_json_round_trip_keeps_everything(wf: dagon.Workflow) -> None:
    doc = json.loads(json.dumps(wf.as_json()))
    again = dagon.Workflow(wf.name, config={}, jsonload=doc)
    again.make_dependencies()
    assert again.as_json() == wf.as_json()
    assert [t.to_dict() for t in again] == [t.to_dict() for t in wf]
    assert again.graph().deps == wf.graph().deps
    for task in wf:
        twin = again.find_task_by_name(wf.name, task.name)
        original = wf.find_task_by_name(wf.name, task.name)
        if isinstance(original, DagonTask):
            assert isinstance(twin, DagonTask)
            assert (twin.task_type, twin.options, twin.mode, twin.runtime) == (
                original.task_type, original.options, original.mode, original.runtime,
            )  # fmt: skip


def test_an_original_dagonstar_document_loads_with_its_edges() -> None:
    legacy = {
        "name": "Old",
        "id": 3,
        "host": "localhost",
        "tasks": {
            "A": {"name": "A", "type": "batch", "command": "echo a > a", "status": "READY", "prevs": [], "nexts": []},
            "B": {"name": "B", "type": "docker", "command": "true", "status": "READY", "prevs": ["A"], "nexts": []},
        },
    }
    wf = dagon.Workflow("Old", config={}, jsonload=legacy)
    assert wf.graph().deps["B"] == {"A"}
    assert wf["B"].runtime == "docker"


def test_type_mapping_and_bad_options() -> None:
    import pytest

    from dagon import ValidationError

    docker = DagonTask(TaskType.DOCKER, "d", "true", image="busybox", remove=True, volume="/data:/data", pull=True)
    # DAGonStar's options become the docker runtime's (containers are always removed)
    assert (docker.spec.runtime, dict(docker.spec.runtime_options)) == (
        "docker",
        {"image": "busybox", "volumes": ["/data:/data"], "pull": "always"},
    )
    nomad = DagonTask(TaskType.NOMAD, "n", "true", image="busybox", cpu=500, memory=256, datacenter="edge")
    assert dict(nomad.spec.runtime_options) == {"image": "busybox", "cpu_mhz": 500, "datacenters": ["edge"]}
    assert nomad.spec.memory == 256 * 2**20
    assert DagonTask(TaskType.SINGULARITY, "s", "true").spec.runtime == "apptainer"
    assert DagonTask(TaskType.BATCH, "b", "true").spec.runtime == "process"
    remote = DagonTask(TaskType.SLURM, "r", "true", partition="debug", ip="192.0.2.1", ssh_username="u")
    # ip=: the agent at that address runs the type's runtime; without one, the ssh runtime does
    assert (remote.spec.runtime, remote.spec.host, dict(remote.spec.runtime_options)) == (
        "slurm",
        "192.0.2.1",
        {"partition": "debug"},
    )
    assert remote.ssh_spec().runtime == "ssh" and not remote.ssh_spec().host
    assert dict(remote.ssh_spec().runtime_options) == {
        "host": "192.0.2.1", "runtime": "slurm", "username": "u", "options": {"partition": "debug"},
    }  # fmt: skip
    with pytest.raises(ValidationError, match=r"TaskType.DOCKER has no option\(s\) \['partition'\]"):
        DagonTask(TaskType.DOCKER, "x", "true", partition="p")
    with pytest.raises(ValidationError, match="parallel mode maps over the files"):
        DagonTask(TaskType.BATCH, "p", "true").set_mode("parallel")


def test_an_original_document_with_a_task_of_another_workflow_loads() -> None:
    """DAGonStar's own JSON of a transversal workflow: F's prevs name A of another workflow, and
    types are DAGonStar's class names; the reference in F's command carries the cross-workflow edge."""
    legacy = {
        "id": "5db6c2c89f25cf000bfeff42",
        "name": "wf2-transversal-demo",
        "tasks": {
            "E": {"name": "E", "type": "batch", "command": "mkdir output;hostname > output/f1.txt", "prevs": []},
            "F": {
                "name": "F", "type": "dockertask", "status": "READY", "working_dir": None,
                "command": "cat workflow://wf1-transversal-demo/A/output/f1.txt workflow:///E/output/f1.txt > f2.txt",
                "prevs": ["A", "E"], "nexts": [],
            },
        },
    }  # fmt: skip
    wf = dagon.Workflow("Other", config={})
    wf.load_json(legacy)
    assert wf.name == "wf2-transversal-demo"  # load_json takes the document's name, as DAGonStar does
    graph = wf.graph(external=True)
    assert graph.deps["F"] == {"E"}
    assert [ref.workflow for ref in graph.external["F"]] == ["wf1-transversal-demo"]
    assert wf["F"].runtime == "docker"
    kept = dagon.Workflow("Named", config={}, jsonload=legacy)  # the constructor's name wins, as in DAGonStar
    assert kept.name == "Named"


def test_positional_options_follow_dagonstars_constructors() -> None:
    import pytest

    from dagon import ValidationError

    slurm = DagonTask(TaskType.SLURM, "I", "true", "testing", 5)
    assert dict(slurm.spec.runtime_options) == {"partition": "testing", "ntasks": 5}
    cloud = DagonTask(TaskType.CLOUD, "C", "true", "ec2", "ubuntu", {"option": "GET", "key_path": "k.pem"})
    assert cloud.options == {
        "provider": "ec2",
        "ssh_username": "ubuntu",
        "key_options": {"option": "GET", "key_path": "k.pem"},
    }
    docker = DagonTask(TaskType.DOCKER, "D", "true", "busybox", None, None, None, True, "/a:/b")
    assert dict(docker.spec.runtime_options) == {"image": "busybox", "volumes": ["/a:/b"]}
    with pytest.raises(ValidationError, match=r"TaskType.SLURM takes at most 3 options by position"):
        DagonTask(TaskType.SLURM, "I", "true", "p", 1, None, "extra")
    with pytest.raises(ValidationError, match="'image' given by position and by name"):
        DagonTask(TaskType.DOCKER, "D", "true", "busybox", image="alpine")
