"""Tier 3: finished runs leave the coordinator's memory and their retained results leave a real
Mosquitto — counted with a wildcard subscription — while ``wait`` and ``dagon status`` still
answer from the run store."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import missing, stop_process

import dagon
from dagon.protocol import SCHEMA_RUN_STATUS, decode_public, topics

from ._stack import retained_runs, start_agent

pytestmark = pytest.mark.mosquitto

TASKS = 12


@pytest.fixture
def agent(mosquitto: Any, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_agent(mosquitto.url, tmp_path, "keeper0", slots=4)
    try:
        yield proc
    finally:
        stop_process(proc)


def workflow(name: str) -> dagon.Workflow:
    wf = dagon.Workflow(name)
    for i in range(TASKS):
        wf.shell(f"t{i}", "true")
    return wf


async def test_finished_runs_leave_memory_and_their_retained_results_leave_the_broker(
    mosquitto: Any, agent: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    home = tmp_path / "client"
    async with dagon.connect(mosquitto.url, home=home, keep_finished=1.5) as client:
        coordinator = client.coordinator
        assert coordinator is not None
        async with asyncio.timeout(20):
            await coordinator.wait_for_agents(1)
        runs = []
        for i in range(3):
            run = await client.submit(workflow(f"keep{i}"))
            assert (await run.wait()).ok
            runs.append(run.id)
        # Within keep_finished: the latest run is in memory and its results are retained.
        assert runs[-1] in coordinator.engine.runs
        now = await retained_runs(mosquitto.url)
        assert {t for t in now if t.startswith(f"dagon/v1/runs/{runs[-1]}/tasks/")} == {
            topics.run_task_result(runs[-1], f"t{i}") for i in range(TASKS)
        }
        async with asyncio.timeout(15):
            while coordinator.engine.runs or coordinator.feed.output.clears_pending:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # the last clears' acknowledgements
        after = await retained_runs(mosquitto.url)
        # One retained document per run is left: its final status, saying the results are gone.
        assert set(after) == {topics.run_status(r) for r in runs}
        for payload in after.values():
            doc = decode_public(payload, schema=SCHEMA_RUN_STATUS)
            assert doc["state"] == "succeeded" and doc["counts"] == {"succeeded": TASKS}
            assert doc["results_retained"] is False
        # wait() of a run that left memory answers from the run store.
        stored = await coordinator.wait(runs[0])
        assert stored.ok and len(stored.tasks) == TASKS and stored["t3"].exit_code == 0
        # So does a client attaching to it; it has no more events.
        handle = await client.attach(runs[1])
        assert [e async for e in handle.events()] == []
        again = await handle.wait()
        assert again.ok and again.workflow == "keep1" and set(again.tasks) == {f"t{i}" for i in range(TASKS)}
    status = subprocess.run(
        [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())", "status", runs[0], "--json"],
        env={"DAGON_HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["state"] == "succeeded" and len(doc["task_list"]) == TASKS


async def test_over_the_task_budget_older_runs_leave_at_once(
    mosquitto: Any, agent: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    async with dagon.connect(mosquitto.url, home=tmp_path / "client", keep_finished_tasks=TASKS) as client:
        coordinator = client.coordinator
        assert coordinator is not None
        async with asyncio.timeout(20):
            await coordinator.wait_for_agents(1)
        runs = []
        for i in range(3):
            run = await client.submit(workflow(f"budget{i}"))
            assert (await run.wait()).ok
            runs.append(run.id)
        async with asyncio.timeout(10):
            while set(coordinator.engine.runs) != {runs[-1]} or coordinator.feed.output.clears_pending:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        left = await retained_runs(mosquitto.url)
    assert sum(t.startswith(f"dagon/v1/runs/{runs[-1]}/tasks/") for t in left) == TASKS
    assert not any("/tasks/" in t for t in left if not t.startswith(f"dagon/v1/runs/{runs[-1]}/"))


async def test_retained_results_carry_an_mqtt5_expiry(
    mosquitto: Any, agent: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    if shutil.which("mosquitto_sub") is None:
        missing("mosquitto_sub not installed: run .ci/setup (apt-get install mosquitto-clients)")
    async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
        assert client.coordinator is not None
        async with asyncio.timeout(20):
            await client.coordinator.wait_for_agents(1)
        run = await client.submit(workflow("expiry"))
        assert (await run.wait()).ok
        sub = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-p", str(mosquitto.port), "-V", "mqttv5", "--retained-only", "-W", "3",
            "-C", str(TASKS + 1), "-F", "%E %t", "-t", f"dagon/v1/runs/{run.id}/#",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await sub.communicate()
    assert sub.returncode == 0, err.decode()
    lines = out.decode().split("\n")
    expiries = {line.split(" ", 1)[1]: int(line.split(" ", 1)[0]) for line in lines if line}
    assert len(expiries) == TASKS + 1
    # The broker counts the interval down: what it forwards is at most a week, and close to it.
    assert all(7 * 86400 - 60 < e <= 7 * 86400 for e in expiries.values()), expiries


def test_a_coordinator_without_public_results_retains_only_each_runs_status(mosquitto: Any, tmp_path: Path) -> None:
    """``dagon coordinator --no-public-results``: no retained topic per task (Mosquitto keeps a node of
    heap for every topic that ever held one, cleared or not — docs/benchmarks.md)."""
    cli = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]
    agent_cmd = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]

    def env(home: Path) -> dict[str, str]:
        return {"DAGON_HOME": str(home), "PATH": "/usr/bin:/bin", "DAGON_INSECURE": "1"}

    coord = subprocess.Popen(
        [*cli, "coordinator", "--broker", mosquitto.url, "--no-public-results"],
        env=env(tmp_path / "coord"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = subprocess.Popen(
        [*agent_cmd, "--broker", mosquitto.url, "--id", "quiet0"],
        env=env(tmp_path / "agent"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        script = tmp_path / "quiet.py"
        script.write_text(
            "import dagon\nwf = dagon.Workflow('quiet')\n"
            + "".join(f"wf.shell('t{i}', 'true')\n" for i in range(TASKS))
        )
        submit = subprocess.run(
            [*cli, "submit", str(script), "--broker", mosquitto.url, "--wait"],
            env=env(tmp_path / "cli"), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stderr
        run = submit.stdout.splitlines()[0].strip()
        left = asyncio.run(retained_runs(mosquitto.url))
    finally:
        stop_process(worker)
        stop_process(coord)
    assert set(left) == {topics.run_status(run)}
    doc = decode_public(left[topics.run_status(run)], schema=SCHEMA_RUN_STATUS)
    assert doc["state"] == "succeeded" and doc["counts"] == {"succeeded": TASKS}
    assert doc["results_retained"] is False
