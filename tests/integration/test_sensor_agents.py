"""Sensor tasks across real agent processes on a real Mosquitto: placed only on the agent with the device,
and when that agent is SIGKILLed mid-capture the task waits for it (no other agent has the port) and
captures again once it is back."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

import dagon

from ._stack import start_agent


def _arduino() -> Any:
    """The example's simulated Arduino (``examples/edge-fog/arduino.py``), loaded by path."""
    name = "edge_fog_arduino"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "examples" / "edge-fog" / "arduino.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name].SimulatedArduino


SimulatedArduino = _arduino()

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


async def wait_for(predicate: Any, seconds: float, what: str) -> None:
    try:
        async with asyncio.timeout(seconds):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}") from None


async def test_a_sensor_follows_its_device_through_a_killed_agent(mosquitto: Any, tmp_path: Path) -> None:
    with SimulatedArduino(period=0.1, link=tmp_path / "ttyACM0") as arduino:
        device = ["--devices", f"serial:{arduino.link}", "--runtimes", "none"]
        edge = start_agent(mosquitto.url, tmp_path, "edge", args=device)
        fog = start_agent(mosquitto.url, tmp_path, "fog", args=["--runtimes", "none"])
        wf = dagon.Workflow("follow")
        wf.sensor("capture", f"serial://{arduino.link}?baud=9600", duration=60, count=30, parse="arduino",
                  retry=dagon.Retry(attempts=2, backoff=0.1), keep=True)  # fmt: skip
        wf.shell("count", "wc -l < workflow:///capture/readings.jsonl > n.txt")
        try:
            async with dagon.connect(mosquitto.url, home=tmp_path / "client", requeue_grace=1) as client:
                assert client.coordinator is not None
                engine = client.coordinator.engine
                async with asyncio.timeout(30):
                    await client.coordinator.wait_for_agents(2)
                run = await client.submit(wf)
                view = engine.run(run.id).tasks["capture"]
                await wait_for(lambda: view.state.value == "running", 30, "the capture to start")
                assert view.agent == "edge"  # the only agent with the port
                workdir = tmp_path / "edge" / "scratch"
                await wait_for(lambda: any(workdir.rglob("readings.jsonl")), 30, "the first readings")
                edge.send_signal(signal.SIGKILL)
                edge.wait()
                await wait_for(lambda: view.attempt == 2 or view.state.value not in ("running",), 30, "a requeue")
                assert view.state.value != "succeeded"  # not on fog: it has no port
                edge = start_agent(mosquitto.url, tmp_path, "edge", args=device)  # the same agent comes back
                async with asyncio.timeout(90):
                    result = await run.wait()
        finally:
            stop_process(edge)
            stop_process(fog)
    assert result.ok, result.cause
    capture = result["capture"]
    assert capture.agent == "edge" and capture.attempt >= 2 and capture.value["readings"] == 30
    rows = (Path(capture.workdir) / "readings.jsonl").read_text().splitlines()
    assert len(rows) == 30 and all("humidity" in json.loads(r) for r in rows)
    assert (Path(result["count"].workdir) / "n.txt").read_text().strip() == "30"
