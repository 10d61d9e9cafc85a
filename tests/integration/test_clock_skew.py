"""The clock against the coordinator's, measured NTP-style (issue 18): a real ``dagon coordinator``
answers signed time queries; ``dagon-agent doctor`` and a ``dagon-agent`` process measure the offset
with the round trip. The agent's clock is shifted by the documented test hook on the measurement
(``DAGON_TEST_CLOCK_OFFSET``): tests cannot set the system clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

import dagon
from dagon._keys import client_signer, coordinator_signer

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto

DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]
DOCTOR = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())", "doctor"]


def doctor(url: str, home: Path, agent: str, shift: str | None) -> dict[str, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGON_")}
    env.update(DAGON_HOME=str(home), DAGON_AGENT_ID=agent, DAGON_SCRATCH=str(home / "scratch"))
    if shift is not None:
        env["DAGON_TEST_CLOCK_OFFSET"] = shift
    done = subprocess.run([*DOCTOR, "--broker", url, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return {c["name"]: c for c in json.loads(done.stdout)}


async def test_doctor_and_agent_measure_the_clock_against_a_real_coordinator(mosquitto: Any, tmp_path: Path) -> None:
    home = tmp_path / "client"
    home.mkdir()
    coordinator_signer(home)
    client_signer(home)
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    with (home / "coordinator.log").open("wb") as log:
        coordinator = subprocess.Popen(
            [*DAGON, "--log-level", "INFO", "coordinator", "--broker", mosquitto.url],
            env={**env, "DAGON_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    agent = start_agent(mosquitto.url, tmp_path, "edge", env={"DAGON_TEST_CLOCK_OFFSET": "-300"})
    try:
        async with asyncio.timeout(60):
            while " online (" not in (home / "coordinator.log").read_text():
                await asyncio.sleep(0.1)
        # The agent measures the clock of a coordinator that hands it work.
        wf = dagon.Workflow("clock")
        wf.shell("one", "true")
        async with dagon.connect(mosquitto.url, home=home, coordinator="main") as client:
            async with asyncio.timeout(60):
                result = await (await client.submit(wf)).wait()
        assert result.ok, result.cause
        agent_log = tmp_path / "edge" / "agent.log"
        async with asyncio.timeout(30):
            while "coordinator main (±" not in agent_log.read_text():
                await asyncio.sleep(0.1)
        said = agent_log.read_text()
        match = re.search(r"WARNING .*agent edge: clock ([0-9.]+) s behind coordinator main \(±([0-9.]+) s", said)
        assert match, said
        assert abs(float(match.group(1)) - 300) <= float(match.group(2)) + 0.5, match.group(0)
        assert "signed tasks (valid ±120 s) are refused" in match.string

        checks = await asyncio.to_thread(doctor, mosquitto.url, tmp_path / "edge", "edge", "-300")
        assert checks["clock"]["status"] == "fail", checks["clock"]
        found = re.search(r"([0-9.]+) s behind coordinator main \(±([0-9.]+) s, round trip (\d+) ms\)",
                          checks["clock"]["detail"])  # fmt: skip
        assert found, checks["clock"]
        assert abs(float(found.group(1)) - 300) <= float(found.group(2)) + 0.5

        checks = await asyncio.to_thread(doctor, mosquitto.url, tmp_path / "edge", "edge", "5")
        assert checks["clock"]["status"] == "warn", checks["clock"]
        assert re.search(r"[0-9.]+ s ahead of coordinator main", checks["clock"]["detail"]), checks["clock"]

        checks = await asyncio.to_thread(doctor, mosquitto.url, tmp_path / "edge", "edge", None)
        clock = checks["clock"]["detail"]
        offset = re.search(r"([0-9.]+) s (behind|ahead of) coordinator main", clock)
        assert "in step with coordinator main" in clock or (offset and float(offset.group(1)) < 2.0), clock
        assert checks["coordinators"]["detail"] == "online: main"
    finally:
        stop_process(agent)
        stop_process(coordinator)
