"""Services start in any order (issue 13, point 6): ``dagon-agent`` and ``dagon coordinator``
started before their broker wait for it, then serve; ``--no-wait-for-broker`` fails at once.
Real processes, a real Mosquitto started 5 s after them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _broker import MOSQUITTO_MISSING, Mosquitto, missing, mosquitto_binary, stop_process

import dagon
from dagon._keys import client_signer, coordinator_signer

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto

DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]


def coordinator_process(url: str, home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_WAIT_FOR_BROKER")}
    env["DAGON_HOME"] = str(home)
    with (home / "coordinator.log").open("wb") as log:
        argv = [*DAGON, "--log-level", "INFO", "coordinator", "--broker", url, *args]
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log)


@pytest.fixture
def late_broker(tmp_path: Path) -> Mosquitto:
    binary = mosquitto_binary()
    if binary is None:
        missing(MOSQUITTO_MISSING)
    return Mosquitto(binary=binary, workdir=tmp_path / "mosquitto")  # not started


async def test_agent_and_coordinator_started_5_s_before_their_broker_serve_once_it_answers(
    late_broker: Mosquitto, tmp_path: Path
) -> None:
    home = tmp_path / "client"
    home.mkdir()
    coordinator_signer(home)
    client_signer(home)
    coordinator = coordinator_process(late_broker.url, home)
    agent = start_agent(late_broker.url, tmp_path, "early", slots=1)
    try:
        await asyncio.sleep(5)  # the broker is not there yet: both keep trying
        assert coordinator.poll() is None, (home / "coordinator.log").read_text()
        assert agent.poll() is None, (tmp_path / "early" / "agent.log").read_text()
        late_broker.start()
        try:
            log = home / "coordinator.log"
            async with asyncio.timeout(60):  # a run handed over before the coordinator listens is not kept
                while "agent early online" not in log.read_text():
                    await asyncio.sleep(0.1)
            async with dagon.connect(late_broker.url, home=home, coordinator="main") as client:
                wf = dagon.Workflow("late")
                wf.shell("job", "echo hello > out.txt")
                async with asyncio.timeout(40):
                    result = await (await client.submit(wf)).wait()
        finally:
            stop_process(agent)
            stop_process(coordinator)
            late_broker.stop()
    finally:
        stop_process(agent)
        stop_process(coordinator)
    assert result.ok, result.cause
    assert result["job"].agent == "early"
    for log in (home / "coordinator.log", tmp_path / "early" / "agent.log"):
        text = log.read_text()
        assert f"MQTT broker {late_broker.url} not reachable" in text, text  # said at once …
        assert "waiting for it, retrying with backoff" in text and "DAGON_WAIT_FOR_BROKER=0" in text
        assert "connected to MQTT broker" in text and "after waiting" in text  # … and when it came
    assert agent.returncode == 0 and coordinator.returncode == 0


async def test_no_wait_for_broker_fails_at_once_and_a_waiting_coordinator_obeys_sigterm(
    late_broker: Mosquitto, tmp_path: Path
) -> None:
    agent = start_agent(late_broker.url, tmp_path, "quick", args=["--no-wait-for-broker"])
    assert await asyncio.to_thread(agent.wait, 60) == 2
    assert "could not connect to the MQTT broker" in (tmp_path / "quick" / "agent.log").read_text()
    home = tmp_path / "coord"
    home.mkdir()
    quitter = coordinator_process(late_broker.url, home, "--no-wait-for-broker")
    assert await asyncio.to_thread(quitter.wait, 60) == 2
    waiting = coordinator_process(late_broker.url, home)
    try:
        log = home / "coordinator.log"
        async with asyncio.timeout(30):
            while "not reachable" not in log.read_text():
                await asyncio.sleep(0.1)
        waiting.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(waiting.wait, 30) == 0
    finally:
        stop_process(waiting)
