"""An assignment that reaches a live agent long after it was sent is refused, never run (issue 13,
point 7(c)): the coordinator may already have given the attempt up and run it again elsewhere.

Real Mosquitto, a real ``dagon coordinator``, a real ``dagon-agent`` frozen with SIGSTOP for 35 s while
its assignment waits (past the coordinator's 30 s ``lost_assignment_grace``, with a heartbeat TTL long
enough that the agent is not lost): when it thaws, its first heartbeat may say it holds nothing, and
the coordinator requeues the attempt — the agent, which measured the coordinator's clock beforehand,
refuses the stale assignment instead of running it too. The task's effect happens once.
"""

from __future__ import annotations

import asyncio
import os
import signal
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
FROZEN = 35.0


async def until(check: Any, within: float, what: str) -> None:
    try:
        async with asyncio.timeout(within):
            while not await asyncio.to_thread(check):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:.0f} s waiting for {what}") from None


@pytest.mark.timeout(240)
async def test_an_assignment_arriving_late_is_refused_and_the_task_runs_once(mosquitto: Any, tmp_path: Path) -> None:
    home = tmp_path / "client"
    home.mkdir()
    coordinator_signer(home)
    client_signer(home)
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    coordinator_log = home / "coordinator.log"
    with coordinator_log.open("wb") as log:
        coordinator = subprocess.Popen(
            [*DAGON, "--log-level", "INFO", "coordinator", "--broker", mosquitto.url, "--heartbeat-ttl", "120"],
            env={**env, "DAGON_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    agent = start_agent(mosquitto.url, tmp_path, "w", slots=1)
    agent_log = tmp_path / "w" / "agent.log"
    marks = tmp_path / "marks"
    try:
        await until(lambda: " online (" in coordinator_log.read_text(), 60, "the agent to be online")
        async with dagon.connect(mosquitto.url, home=home, coordinator="main") as client:
            warm = dagon.Workflow("warm")
            warm.shell("one", "true")
            async with asyncio.timeout(60):
                assert (await (await client.submit(warm)).wait()).ok
            # The agent measured the coordinator's clock when it first got work from it.
            await until(lambda: "coordinator main (±" in agent_log.read_text(), 30, "the clock measurement")
            agent.send_signal(signal.SIGSTOP)
            try:
                wf = dagon.Workflow("late")
                wf.shell("once", f"echo $DAGON_ATTEMPT >> {marks}")
                run = await client.submit(wf)
                await asyncio.sleep(FROZEN)
            finally:
                agent.send_signal(signal.SIGCONT)
            async with asyncio.timeout(90):
                result = await run.wait()
    finally:
        stop_process(agent)
        stop_process(coordinator)
    assert result.ok, result.cause
    assert len(marks.read_text().split()) == 1, marks.read_text()  # once, whatever attempt ran it
    (past,) = result["once"].retries
    assert past.attempt == 1 and past.agent == "w", past
    said = agent_log.read_text()
    if "refused it: the assignment arrived" in past.cause:  # the agent refused it before any heartbeat
        assert "not running late-" in said and "attempt 1: the assignment arrived" in said, said
    else:  # a heartbeat saying it held nothing came first: the coordinator gave attempt 1 up ...
        assert past.cause in ("assignment never reached agent w", "agent w does not hold attempt 1 (lost)"), past
        assert "attempt 1: the assignment arrived" in said, said  # ... and the agent did not run it
    assert marks.read_text().split() == ["2"]
