"""Retried attempts and their cause through a standalone coordinator (issue 13, point 7): a client
that only waits for its run (no progress view), and ``dagon status RUN`` read from the broker on a
machine without the coordinator's store, both say which attempt was retried, where, and why.

Real Mosquitto, a real ``dagon coordinator`` and real ``dagon-agent`` processes, a real SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from _broker import stop_process

import dagon
from dagon._keys import client_signer, coordinator_signer

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "run-status.json"
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]


async def wait_for(path: Path, within: float) -> None:
    async with asyncio.timeout(within):
        while not await asyncio.to_thread(path.exists):
            await asyncio.sleep(0.05)


async def test_remote_wait_and_status_show_the_attempt_lost_with_a_sigkilled_agent(
    mosquitto: Any, tmp_path: Path
) -> None:
    home = tmp_path / "client"
    home.mkdir()
    coordinator_signer(home)
    client_signer(home)
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    wf = dagon.Workflow("lost-remote")
    wf.shell(
        "slow",
        f"touch {tmp_path}/started-$DAGON_ATTEMPT; while [ ! -e {gate} ]; do sleep 0.05; done;"
        f" echo $DAGON_ATTEMPT >> {marks}",
    )
    # after `slow`: never in flight on the victim when it dies (on a loaded machine its result could still
    # be unsent then, and it would rightly count as a second retried task)
    wf.shell("quick", "true", after=["slow"])
    victim = start_agent(mosquitto.url, tmp_path, "victim", slots=2)
    survivor: subprocess.Popen[bytes] | None = None
    with (home / "coordinator.log").open("wb") as log:
        coordinator = subprocess.Popen(
            [*DAGON, "--log-level", "INFO", "coordinator", "--broker", mosquitto.url, "--requeue-grace", "1"],
            env={**env, "DAGON_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with dagon.connect(mosquitto.url, home=home, coordinator="main") as client:
            async with asyncio.timeout(60):  # the victim is online before the run goes out
                while " online (" not in (home / "coordinator.log").read_text():
                    await asyncio.sleep(0.1)
            run = await client.submit(wf)
            await wait_for(tmp_path / "started-1", 60)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            survivor = start_agent(mosquitto.url, tmp_path, "survivor", slots=2)
            await wait_for(tmp_path / "started-2", 60)
            gate.touch()
            async with asyncio.timeout(60):
                result = await run.wait()  # the Python API alone: no progress view, no events followed
    finally:
        gate.touch()
        stop_process(victim)
        stop_process(survivor)
        stop_process(coordinator)
    assert result.ok, result.cause
    assert marks.read_text().split() == ["2"]  # the effect once, from the second attempt
    (past,) = result["slow"].retries
    assert (past.attempt, past.agent) == (1, "victim"), past
    assert past.cause.startswith("agent victim lost (connection lost)"), past.cause
    assert (result["slow"].attempt, result["slow"].agent) == (2, "survivor")
    # `dagon status` on another machine: no run store there, the run's status from the broker.
    elsewhere = {**env, "DAGON_HOME": str(tmp_path / "elsewhere")}
    status = [*DAGON, "status", run.id, "--broker", mosquitto.url]
    doc = json.loads(subprocess.run([*status, "--json"], env=elsewhere, capture_output=True, text=True, timeout=60,
                                    check=True).stdout)  # fmt: skip
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)  # the documented schema
    assert doc["state"] == "succeeded" and "task_list" not in doc
    assert doc["retried_tasks"] == 1
    (task,) = doc["retried"]
    assert (task["name"], task["state"], task["attempt"], task["agent"]) == ("slow", "succeeded", 2, "survivor")
    (attempt,) = task["retries"]
    assert (attempt["attempt"], attempt["agent"]) == (1, "victim")
    assert attempt["cause"].startswith("agent victim lost (connection lost)"), attempt
    shown = subprocess.run(status, env=elsewhere, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "slow: succeeded (attempt 2)" in shown, shown
    assert "retried: attempt 1 on victim: agent victim lost (connection lost)" in shown, shown
