"""Durability with real processes and real signals over a real Mosquitto (issue: durable runs).

The coordinator is a ``dagon coordinator`` process, agents are ``dagon-agent``
processes, and every task appends a line to a marker file when it runs: the
markers count real executions, so "never ran twice" is checked on the effects.
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
from dagon.core import RunStore

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto

DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]
COORDINATOR = [*DAGON, "--log-level", "INFO", "coordinator"]


def start_coordinator(url: str, home: Path, log_name: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    env["DAGON_HOME"] = str(home)
    with (home / log_name).open("wb") as log:
        return subprocess.Popen(
            [*COORDINATOR, "--broker", url, "--heartbeat-ttl", "10"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def markers(path: Path) -> list[str]:
    return sorted(path.read_text().split("\n")[:-1]) if path.exists() else []


async def wait_for(predicate: Any, seconds: float, what: str) -> None:
    try:
        async with asyncio.timeout(seconds):
            while not predicate():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}") from None


async def test_killed_coordinator_resumes_the_run_and_reruns_nothing_that_succeeded(
    mosquitto: Any, tmp_path: Path
) -> None:
    home = tmp_path / "client"  # coordinator and client share it; start_agent enrolls its coordinator key
    home.mkdir()
    coordinator_signer(home)
    client_signer(home)
    mark = tmp_path / "markers"
    wf = dagon.Workflow("resumable")
    for i in range(3):
        wf.shell(f"a{i}", f"echo a{i} >> {mark}; echo {i} > out.txt")
    wf.shell("b", f"cat workflow:///a0/out.txt workflow:///a1/out.txt; echo b >> {mark}; sleep 4; echo ok > b.txt")
    wf.shell("c", f"cat workflow:///b/b.txt workflow:///a2/out.txt > c.txt; echo c >> {mark}")
    coordinator = start_coordinator(mosquitto.url, home, "coordinator-1.log")
    agent = start_agent(mosquitto.url, tmp_path, "worker", slots=4)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        async with dagon.connect(mosquitto.url, home=home, coordinator="main") as client:
            log1 = home / "coordinator-1.log"
            await wait_for(lambda: "agent worker online" in log1.read_text(), 20, "the agent to be online")
            run = await client.submit(wf)
            await wait_for(lambda: "b" in markers(mark), 30, "task b to start")
            coordinator.send_signal(signal.SIGKILL)  # no shutdown at all: the store is all that is left
            coordinator.wait()
            restarted = start_coordinator(mosquitto.url, home, "coordinator-2.log")
            async with asyncio.timeout(60):
                result = await run.wait()
    finally:
        stop_process(agent)
        stop_process(coordinator)
        if restarted is not None:
            stop_process(restarted)
    log2 = (home / "coordinator-2.log").read_text()
    assert result.ok, f"{result.cause}\n{log2}"
    # Every task's effect happened exactly once: the succeeded a's and the running b were not re-run.
    assert markers(mark) == ["a0", "a1", "a2", "b", "c"], log2
    assert "resumed run" in log2 and "3 succeeded (kept), 1 on agents (re-attaching)" in log2, log2
    store = RunStore(home / "runs.sqlite")
    try:
        tasks = {t.name: t for t in store.tasks(run.id)}
    finally:
        store.close()
    assert {n: (t.state, t.attempt) for n, t in tasks.items()} == dict.fromkeys(wf.tasks, ("succeeded", 1))


async def test_outputs_lost_with_a_killed_agent_are_regenerated_for_their_consumer(
    mosquitto: Any, tmp_path: Path
) -> None:
    """SIGKILL the agent holding a finished task's only copy while its consumer still waits:
    the producer runs again elsewhere and the consumer reads the new copy."""
    mark, gate = tmp_path / "markers", tmp_path / "gate"
    wf = dagon.Workflow("regenerate")
    wf.shell("wait", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    wf.shell("a", f"echo a >> {mark}; echo attempt $DAGON_ATTEMPT > who.txt")
    wf.shell("b", f"cat workflow:///a/who.txt > got.txt; echo b >> {mark}", after=["wait"])
    no_queue = tmp_path / "no-queue.toml"
    no_queue.write_text("prefetch = 0\n")  # one slot each and nothing queued: `a` and `wait` run apart
    agents = {
        name: start_agent(
            mosquitto.url,
            tmp_path,
            name,
            slots=1,
            env={"DAGON_HOST_ID": f"host-{name}"},
            args=["--config", str(no_queue)],
        )
        for name in ("one", "two")
    }
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client", requeue_grace=2) as client:
            assert client.coordinator is not None
            engine = client.coordinator.engine
            async with asyncio.timeout(20):
                await client.coordinator.wait_for_agents(2)
            run = await client.submit(wf)
            view = engine.run(run.id).tasks["a"]
            await wait_for(lambda: view.state.value == "succeeded", 30, "a to succeed")
            victim = str(view.agent)
            survivor = next(name for name in agents if name != victim)
            agents[victim].send_signal(signal.SIGKILL)  # its Last Will tells; a's output dies with it
            agents[victim].wait()
            await wait_for(lambda: engine.regenerated == 1, 30, "a to be regenerated")
            gate.touch()
            async with asyncio.timeout(60):
                result = await run.wait()
    finally:
        for proc in agents.values():
            stop_process(proc)
    assert result.ok, result.cause
    assert (result["a"].agent, result["a"].attempt) == (survivor, 2)
    assert (Path(result["b"].workdir) / "got.txt").read_text() == "attempt 2\n"
    assert markers(mark) == ["a", "a", "b"]  # a ran again (its only copy died); b once
