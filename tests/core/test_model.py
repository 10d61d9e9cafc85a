"""Workflow model: task options survive serialisation and reach the assignment."""

from __future__ import annotations

import pytest

from dagon.core import AgentAnnounced, Engine, RunSubmitted, Task, ValidationError, Workflow
from dagon.protocol import AgentId, RunId

from ._sim import caps, dispatches


def test_runtime_options_round_trip_and_reach_the_assignment() -> None:
    wf = Workflow("opts")
    options = {"image": "local/busybox", "pull": "never", "volumes": ["/data:/data:ro"]}
    wf.add(Task(name="c", command="true", runtime="process", cpus=2, memory=1 << 20, runtime_options=options))
    copy = Workflow.from_dict(wf.to_dict())
    assert dict(copy["c"].runtime_options) == options
    assert copy["c"].to_dict() == wf["c"].to_dict()

    engine = Engine()
    engine.handle(AgentAnnounced(AgentId("a1"), caps()), 0.0)
    engine.handle(RunSubmitted(RunId("r1"), copy, copy.graph()), 0.0)
    (d,) = dispatches(engine.schedule(0))
    assert d.assignment.runtime_options == options
    assert (d.assignment.cpus, d.assignment.memory) == (2.0, 1 << 20)


def test_runtime_options_must_be_plain_data() -> None:
    with pytest.raises(ValidationError, match="runtime_options"):
        Workflow("bad").add(Task(name="c", command="true", runtime_options={"image": object()}))


def test_a_task_without_options_serialises_without_them() -> None:
    wf = Workflow("plain")
    wf.shell("a", "true")
    assert "runtime_options" not in wf.to_dict()["tasks"][0]
