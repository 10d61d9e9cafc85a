"""``wf.sensor`` / ``wf.actuate``: the tasks they build, their validation, and device placement."""

from __future__ import annotations

import dataclasses

import pytest

from dagon.core import Task, ValidationError, Workflow
from dagon.core._fit import Scored, check_placeable
from dagon.core._placement import AgentView
from dagon.protocol import AgentId, Capabilities

from ._sim import caps


def device_agent(name: str, *devices: str) -> AgentView:
    c = dataclasses.replace(caps(), runtimes=("process", "python", "sensor", "actuator"), devices=devices)
    view = AgentView(AgentId(name), c)
    view.online = True
    return view


def test_sensor_task_fields_and_round_trip() -> None:
    wf = Workflow("edge")
    t = wf.sensor("dht", "serial:///dev/ttyACM0?baud=9600", duration=300, parse="arduino", labels={"site": "edge"})
    assert (t.runtime, t.command, t.device) == ("sensor", "serial:///dev/ttyACM0?baud=9600", "serial:/dev/ttyACM0")
    assert dict(t.runtime_options) == {"duration": 300.0, "parse": "arduino"}
    assert t.timeout == 360.0 and dict(t.labels) == {"site": "edge"}
    mqtt = wf.sensor("plug", "mqtt://home/plug/+", duration=10, every=2)
    assert mqtt.device == "" and dict(mqtt.runtime_options) == {"duration": 10.0, "every": 2.0, "parse": "json"}
    iio = wf.sensor("bme", "iio://bme280", duration=5, parse="json:loads", after=[t])
    assert iio.after == ("dht",) and iio.runtime_options["parse"] == "json:loads"
    act = wf.actuate("fan", "i2c://1/0x20?register=0x01", True, after=["dht"])
    assert (act.runtime, act.device, dict(act.runtime_options)) == ("actuator", "i2c:1", {"value": 1})
    again = Workflow.from_dict(wf.to_dict())
    assert [(x.device, dict(x.runtime_options)) for x in again] == [(x.device, dict(x.runtime_options)) for x in wf]
    assert wf.to_dict()["tasks"][0]["device"] == "serial:/dev/ttyACM0"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda wf: wf.sensor("s", "serial://tty", duration=1), "must be absolute"),
        (lambda wf: wf.sensor("s", "serial:///dev/ttyACM0", duration=0), "duration must be a positive number"),
        (lambda wf: wf.sensor("s", "serial:///dev/ttyACM0", duration=1, every=-1), "every must be"),
        (lambda wf: wf.sensor("s", "iio://dht11", duration=1, every=0.001), "at least 0.01 s"),
        (lambda wf: wf.sensor("s", "iio://dht11", duration=float("inf")), "duration must be a positive"),
        (lambda wf: wf.sensor("s", "serial:///dev/ttyACM0", duration=1, count=0), "count must be"),
        (lambda wf: wf.sensor("s", "serial:///dev/ttyACM0", duration=1, image="x"), "unknown option"),
        (lambda wf: wf.sensor("s", "serial:///dev/x", duration=1, parse=lambda line: {}), "not importable"),
        (lambda wf: wf.actuate("a", "mqtt://relay/1", [1, 2]), "a string or a number"),
        (lambda wf: wf.actuate("a", "iio://dht11", 1), "scheme 'iio'"),
    ],
)
def test_bad_sensor_tasks_name_the_task_and_the_fix(call: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        call(Workflow("w"))  # type: ignore[operator]
    assert "task 's'" in str(info.value) or "task 'a'" in str(info.value)


def test_placed_only_where_the_device_is() -> None:
    wf = Workflow("edge")
    task = wf.sensor("dht", "serial:///dev/ttyACM0", duration=5)
    fog, edge = device_agent("fog"), device_agent("edge", "serial:/dev/ttyACM0", "i2c:1")
    assert Scored().choose(task, [fog, edge], input_hosts=frozenset()) is edge
    assert Scored().choose(task, [fog], input_hosts=frozenset()) is None
    with pytest.raises(ValidationError, match=r"device serial:/dev/ttyACM0 not on it \(it has none\)"):
        check_placeable(wf, [fog])
    check_placeable(wf, [fog, edge])
    anywhere = Task(name="p", command="echo")
    assert Scored().choose(anywhere, [fog], input_hosts=frozenset()) is fog


def test_capabilities_default_to_no_devices() -> None:
    assert Capabilities(hostname="h", host_id="h", arch="x", os="linux", cpus=1, memory=1, runtimes=(),
                        labels={}, slots=1, version="v").devices == ()  # fmt: skip
