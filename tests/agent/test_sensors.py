"""Sensor and actuator tasks against devices: a pty playing the original's Arduino at 9600 baud, IIO
sysfs fixture trees, an SMBus stand-in (no I²C here), and a whole agent running a sensor task."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import select
import sys
from pathlib import Path
from typing import Any

import pytest

from dagon.agent.runtimes import Execution
from dagon.agent.sensors import READINGS_FILE, ActuatorRuntime, SensorRuntime
from dagon.protocol import SCHEMA_READING, ResultStatus, decode_public, topics
from dagon.protocol.transport import MemoryHub

from ._devices import FakeSMBus, SimulatedArduino, fds_on, iio_tree
from ._support import AGENT, assign, running_agent


def execution(tmp_path: Path, source: str, *, runtime: str = "sensor", attempt: int = 1, **options: Any) -> Execution:
    a = assign("capture", source, runtime=runtime, attempt=attempt, runtime_options=options)
    workdir = tmp_path / f"capture-{attempt}"
    (workdir / ".dagon").mkdir(parents=True, exist_ok=True)
    return Execution(a, source, workdir, {}, workdir / ".dagon" / "stdout", workdir / ".dagon" / "stderr")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_serial_capture_from_a_pty_arduino_at_9600_baud(tmp_path: Path) -> None:
    published: list[tuple[str, bytes]] = []
    runtime = SensorRuntime(agent="edge", publish=lambda t, p: published.append((t, p)))
    with SimulatedArduino(period=0.05, error_every=3) as arduino:
        ex = execution(tmp_path, f"serial://{arduino.port}?baud=9600", duration=60, count=5, parse="arduino")
        outcome = await runtime.run(ex)
    assert outcome.status is ResultStatus.SUCCEEDED, outcome.error
    assert outcome.value["readings"] == 5 and outcome.value["file"] == READINGS_FILE
    rows = lines(ex.workdir / READINGS_FILE)
    assert len(rows) == 5
    for row in rows:  # error lines and the banner were skipped, never recorded as zeros
        assert set(row) == {"ts", "humidity", "temp_c", "temp_f", "heat_index_c"}
        assert 10 <= row["temp_c"] <= 35 and row["temp_f"] == pytest.approx(row["temp_c"] * 9 / 5 + 32, abs=0.01)
    assert [t for t, _ in published] == [topics.run_task_readings("r1", "capture")] * 5
    docs = [decode_public(p, schema=SCHEMA_READING) for _, p in published]
    assert [d["seq"] for d in docs] == [1, 2, 3, 4, 5]
    assert docs[0]["reading"] == {k: v for k, v in rows[0].items() if k != "ts"}
    assert docs[0]["agent"] == "edge" and docs[0]["task"] == "capture" and docs[0]["run"] == "r1"


async def test_duration_ends_the_capture_and_every_thins_a_stream(tmp_path: Path) -> None:
    with SimulatedArduino(period=0.02) as arduino:
        ex = execution(tmp_path, f"serial://{arduino.port}", duration=0.6, every=0.25, parse="arduino")
        outcome = await SensorRuntime(agent="edge").run(ex)
        sent = arduino.lines
    assert outcome.status is ResultStatus.SUCCEEDED, outcome.error
    kept = len(lines(ex.workdir / READINGS_FILE))
    assert 1 <= kept <= 3 < sent  # at most one reading per 0.25 s of a 50-per-second stream


async def test_a_missing_port_fails_with_the_cause(tmp_path: Path) -> None:
    ex = execution(tmp_path, "serial:///dev/ttyACM97?baud=9600", duration=5, parse="arduino")
    outcome = await SensorRuntime(agent="edge").run(ex)
    assert outcome.status is ResultStatus.FAILED
    assert "serial port /dev/ttyACM97 does not exist" in outcome.error


async def test_unplugging_mid_capture_fails_and_keeps_what_was_read(tmp_path: Path) -> None:
    arduino = SimulatedArduino(period=0.05).__enter__()
    ex = execution(tmp_path, f"serial://{arduino.port}", duration=60, parse="arduino")
    task = asyncio.create_task(SensorRuntime(agent="edge").run(ex))
    try:
        async with asyncio.timeout(20):
            while not (ex.workdir / READINGS_FILE).exists() or not lines(ex.workdir / READINGS_FILE):
                await asyncio.sleep(0.02)
    finally:
        await asyncio.to_thread(arduino.unplug)
    outcome = await task
    assert outcome.status is ResultStatus.FAILED
    assert "reading serial port" in outcome.error and "disconnected" in outcome.error, outcome.error
    assert lines(ex.workdir / READINGS_FILE)  # everything read before the cable went is on disk


async def test_nothing_parseable_is_a_failure_not_an_empty_success(tmp_path: Path) -> None:
    with SimulatedArduino(period=0.02) as arduino:
        ex = execution(tmp_path, f"serial://{arduino.port}", duration=0.5, parse="json")  # wrong parser
        outcome = await SensorRuntime(agent="edge").run(ex)
    assert outcome.status is ResultStatus.FAILED
    assert "no readings from serial://" in outcome.error and "could not be read" in outcome.error
    assert "Humidity:" in outcome.error  # the last unreadable line is quoted


async def test_iio_channels_by_name_with_the_abi_scaling(tmp_path: Path) -> None:
    root = tmp_path / "iio"
    iio_tree(root, 0, "dht11", {"in_temp_input": "22000", "in_humidityrelative_input": "45000"})
    iio_tree(root, 1, "bme280", {"in_pressure_raw": "1000", "in_pressure_scale": "0.1", "in_pressure_offset": "5",
                                 "in_voltage0_raw": "512", "in_voltage_scale": "2"})  # fmt: skip
    runtime = SensorRuntime(agent="edge", iio_root=root)
    ex = execution(tmp_path, "iio://dht11", duration=30, every=0.01, count=3)
    outcome = await runtime.run(ex)
    assert outcome.status is ResultStatus.SUCCEEDED, outcome.error
    assert [(r["temp"], r["humidityrelative"]) for r in lines(ex.workdir / READINGS_FILE)] == [(22000.0, 45000.0)] * 3
    ex2 = execution(tmp_path, f"iio://{root}/iio:device1", attempt=2, duration=30, every=0.01, count=1)
    outcome = await runtime.run(ex2)
    assert outcome.status is ResultStatus.SUCCEEDED, outcome.error
    row = lines(ex2.workdir / READINGS_FILE)[0]
    assert row["pressure"] == pytest.approx((1000 + 5) * 0.1) and row["voltage0"] == 1024.0  # shared scale


async def test_iio_device_missing_or_unreadable(tmp_path: Path) -> None:
    root = tmp_path / "iio"
    runtime = SensorRuntime(agent="edge", iio_root=root)
    outcome = await runtime.run(execution(tmp_path, "iio://dht11", duration=5, every=0.01))
    assert outcome.status is ResultStatus.FAILED and "no IIO device named 'dht11'" in outcome.error
    device = iio_tree(root, 0, "dht11", {})
    (device / "in_temp_input").mkdir()  # every read fails (EISDIR), as a dead sensor's EIO would
    outcome = await runtime.run(execution(tmp_path, "iio://dht11", attempt=2, duration=30, every=0.01))
    assert outcome.status is ResultStatus.FAILED
    assert "5 reads in a row failed" in outcome.error and "Is a directory" in outcome.error


async def test_i2c_register_block_and_a_missing_bus(tmp_path: Path) -> None:
    bus = FakeSMBus({0x76: {0xF7: 0x51, 0xF8: 0xA0, 0xF9: 0x00}})
    runtime = SensorRuntime(agent="edge", open_bus=lambda n: bus)
    ex = execution(tmp_path, "i2c://1/0x76?register=0xf7&length=3", duration=30, every=0.01, count=2,
                   parse="tests.agent._devices:FakeSMBus")  # fmt: skip
    # A parser for i2c gets the reading dict; a class is callable but returns no dict: the task fails clearly.
    outcome = await runtime.run(ex)
    assert outcome.status is ResultStatus.FAILED and "not a dict" in outcome.error
    ex = execution(tmp_path, "i2c://1/0x76?register=0xf7&length=3", attempt=2, duration=30, every=0.01, count=2)
    outcome = await runtime.run(ex)
    assert outcome.status is ResultStatus.SUCCEEDED, outcome.error
    assert [r["bytes"] for r in lines(ex.workdir / READINGS_FILE)] == [[0x51, 0xA0, 0x00]] * 2
    assert bus.closed
    # The real smbus2 against a bus this machine does not have: the cause, not a traceback.
    real = SensorRuntime(agent="edge")
    outcome = await real.run(execution(tmp_path, "i2c://97/0x76", attempt=3, duration=5))
    assert outcome.status is ResultStatus.FAILED
    assert "cannot open I²C bus /dev/i2c-97" in outcome.error and "No such file" in outcome.error


def _read_line(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], 10)
        assert ready, f"nothing written to the pty (got {data!r})"
        data += os.read(fd, 1024)
    return data


async def test_actuator_writes_once_per_attempt(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        runtime = ActuatorRuntime()
        ex = execution(tmp_path, f"serial://{port}?baud=9600", runtime="actuator", value="FAN ON")
        first = await runtime.run(ex)
        assert first.status is ResultStatus.SUCCEEDED and first.value["written"] is True
        assert await asyncio.to_thread(_read_line, master) == b"FAN ON\n"
        again = await runtime.run(ex)  # the same attempt delivered again
        assert again.status is ResultStatus.SUCCEEDED and again.value["written"] is False
        assert select.select([master], [], [], 0.3)[0] == []  # nothing more reached the device
        retry = await runtime.run(execution(tmp_path, f"serial://{port}", runtime="actuator", attempt=2, value=1.5))
        assert retry.value["written"] is True and await asyncio.to_thread(_read_line, master) == b"1.5\n"
    finally:
        os.close(master)
        os.close(slave)
    bus = FakeSMBus({0x20: {}})
    i2c = ActuatorRuntime(open_bus=lambda n: bus)
    outcome = await i2c.run(execution(tmp_path, "i2c://1/0x20?register=0x01", runtime="actuator", attempt=3, value=255))
    assert outcome.status is ResultStatus.SUCCEEDED and bus.writes == [(0x20, 0x01, [255])]
    outcome = await i2c.run(execution(tmp_path, "i2c://1/0x21", runtime="actuator", attempt=4, value=1))
    assert outcome.status is ResultStatus.FAILED and "Remote I/O error" in outcome.error
    outcome = await i2c.run(execution(tmp_path, "i2c://1/0x20", runtime="actuator", attempt=5, value=256))
    assert outcome.status is ResultStatus.FAILED and "0-255" in outcome.error


async def test_an_agent_runs_a_sensor_task_and_announces_its_devices(hub: MemoryHub, tmp_path: Path) -> None:
    with SimulatedArduino(period=0.05, link=tmp_path / "ttyACM0") as arduino:
        source = f"serial://{arduino.link}?baud=9600"
        async with running_agent(hub, tmp_path, devices=f"serial:{arduino.link}") as (agent, coord), \
                hub.transport() as observer:  # fmt: skip
            assert f"serial:{arduino.link}" in agent.capabilities.devices
            assert {"sensor", "actuator"} <= set(agent.capabilities.runtimes)
            await observer.subscribe(topics.run_task_readings("r1", "dht"))
            opts = {"duration": 60.0, "count": 3, "parse": "arduino"}
            await coord.assign(assign("dht", source, runtime="sensor", runtime_options=opts))
            result = (await coord.results(1))["dht"]
            assert result.status is ResultStatus.SUCCEEDED, result.error
            assert result.value["readings"] == 3
            assert any(o.path == READINGS_FILE for o in result.outputs)  # a workflow:// consumer can stage it
            live = decode_public((await anext(observer.messages())).payload, schema=SCHEMA_READING)
            assert live["agent"] == AGENT and live["reading"]["humidity"] > 0


async def test_cancelling_a_capture_releases_the_port(tmp_path: Path) -> None:
    with SimulatedArduino(period=0.05) as arduino:
        held_before = fds_on(arduino.port)  # the simulator's own end
        ex = execution(tmp_path, f"serial://{arduino.port}", duration=60, parse="arduino")
        task = asyncio.create_task(SensorRuntime(agent="edge").run(ex))
        async with asyncio.timeout(20):
            while not (ex.workdir / READINGS_FILE).exists() or not lines(ex.workdir / READINGS_FILE):
                await asyncio.sleep(0.02)
        assert fds_on(arduino.port) > held_before  # the capture holds the port
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fds_on(arduino.port) == held_before  # closed on cancellation


async def test_the_task_timeout_is_enforced_and_user_parsers_run_off_the_loop(tmp_path: Path) -> None:
    with SimulatedArduino(period=0.05) as arduino:
        ex = execution(tmp_path, f"serial://{arduino.port}", duration=60, parse="tests.agent._devices:thread_parser")
        ex = dataclasses.replace(ex, assignment=dataclasses.replace(ex.assignment, timeout=0.5))
        outcome = await SensorRuntime(agent="edge").run(ex)
    assert outcome.status is ResultStatus.TIMEOUT and "0.5 s timeout" in outcome.error
    rows = lines(ex.workdir / READINGS_FILE)
    assert rows and all(r["thread"] != "MainThread" for r in rows)  # a slow parser cannot stall the agent


async def test_two_captures_of_one_port_do_not_share_it(tmp_path: Path) -> None:
    with SimulatedArduino(period=0.05) as arduino:
        first = execution(tmp_path, f"serial://{arduino.port}", duration=60, parse="arduino")
        task = asyncio.create_task(SensorRuntime(agent="edge").run(first))
        try:
            async with asyncio.timeout(20):
                while not (first.workdir / READINGS_FILE).exists() or not lines(first.workdir / READINGS_FILE):
                    await asyncio.sleep(0.02)
            second = execution(tmp_path, f"serial://{arduino.port}", attempt=2, duration=60, parse="arduino")
            outcome = await SensorRuntime(agent="edge").run(second)
            assert outcome.status is ResultStatus.FAILED
            assert f"cannot open serial port {arduino.port}" in outcome.error and "lock" in outcome.error
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_without_the_device_extra_the_task_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "serial_asyncio", None)  # as on an agent installed without [device]
    monkeypatch.setitem(sys.modules, "smbus2", None)
    with SimulatedArduino(period=0.05) as arduino:
        outcome = await SensorRuntime(agent="edge").run(execution(tmp_path, f"serial://{arduino.port}", duration=5))
    assert outcome.status is ResultStatus.FAILED and "pip install 'dagon-engine[device]'" in outcome.error
    outcome = await SensorRuntime(agent="edge").run(execution(tmp_path, "i2c://1/0x76", attempt=2, duration=5))
    assert (
        outcome.status is ResultStatus.FAILED and "smbus2" in outcome.error and "dagon-engine[device]" in outcome.error
    )
