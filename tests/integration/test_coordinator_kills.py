"""The standalone coordinator SIGKILLed and restarted at random moments, at least 50 times (issue 13,
point 2): every run finishes and no task's effect ever happens twice.

Real ``dagon coordinator`` and ``dagon-agent`` processes over a real Mosquitto. Each task appends
one line to a marker file of its own at its very end, so a task executed twice shows as two lines.
The random moments include the coordinator's own start (before it serves) and every phase of a
run: assignments in flight, tasks running, results arriving, acknowledgements pending. The seed is
printed (``DAGON_KILL_SEED`` replays a sequence).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

import dagon
from dagon._keys import client_signer, coordinator_signer
from dagon.protocol import SCHEMA_RUN_STATUS, decode_public, topics
from dagon.protocol.transport import MqttTransport

from ._stack import retained_runs, start_agent

pytestmark = pytest.mark.mosquitto

KILLS = 50
PER_RUN = 5  # kills while one run goes on
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]


class Coordinator:
    """The standalone coordinator, started again after each kill (same id, home and store)."""

    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home = url, home
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
        env["DAGON_HOME"] = str(self.home)
        self.lives += 1
        with (self.home / f"coordinator-{self.lives}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [*DAGON, "--log-level", "INFO", "coordinator", "--broker", self.url, "--heartbeat-ttl", "10",
                 "--requeue-grace", "3"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- coordinator life {i}\n" + (self.home / f"coordinator-{i}.log").read_text()[-3000:]
            for i in range(max(1, self.lives - 2), self.lives + 1)
        )


def one_agent_stack(url: str, tmp_path: Path) -> tuple[Path, subprocess.Popen[bytes], Coordinator]:
    """A client home (coordinator and client keys), one agent with one slot, the coordinator started."""
    home = tmp_path / "client"
    home.mkdir()
    coordinator_signer(home)
    client_signer(home)
    agent = start_agent(url, tmp_path, "w", slots=1)
    coordinator = Coordinator(url, home)
    coordinator.start()
    return home, agent, coordinator


def workflow(n: int, marks: Path, rng: random.Random) -> dagon.Workflow:
    """A chain with a fan-out and a fan-in: s → (a, b) → j → t1 → t2, each ending with its marker."""
    wf = dagon.Workflow(f"kills{n}")

    def step(name: str, after: list[str]) -> None:
        pause = f"{rng.uniform(0.05, 0.6):.2f}"
        wf.shell(name, f"sleep {pause}; echo $DAGON_ATTEMPT > out.txt; echo $DAGON_ATTEMPT >> {marks / name}",
                 after=after)  # fmt: skip

    step("s", [])
    step("a", ["s"])
    step("b", ["s"])
    step("j", ["a", "b"])
    step("t1", ["j"])
    step("t2", ["t1"])
    return wf


@pytest.mark.timeout(600)
async def test_a_coordinator_killed_50_times_finishes_every_run_and_runs_no_task_twice(
    mosquitto: Any, tmp_path: Path
) -> None:
    seed = int(os.environ.get("DAGON_KILL_SEED") or random.randrange(1 << 30))
    print(f"DAGON_KILL_SEED={seed}")
    rng = random.Random(seed)
    home = tmp_path / "client"
    home.mkdir()
    coordinator_signer(home)
    client_signer(home)
    agents = [start_agent(mosquitto.url, tmp_path, f"w{i}", slots=2) for i in range(2)]
    coordinator = Coordinator(mosquitto.url, home)
    coordinator.start()
    kills = 0
    finished: list[str] = []
    try:
        async with dagon.connect(mosquitto.url, home=home, coordinator="main", answer_timeout=90) as client:
            log = home / "coordinator-1.log"
            async with asyncio.timeout(60):
                while log.read_text().count(" online (") < 2:
                    await asyncio.sleep(0.1)
            n = 0
            while kills < KILLS:
                n += 1
                marks = tmp_path / f"marks{n}"
                marks.mkdir()
                wf = workflow(n, marks, rng)
                run = await client.submit(wf)
                for _ in range(PER_RUN):
                    await asyncio.sleep(rng.uniform(0.0, 2.0))
                    coordinator.kill()
                    kills += 1
                    await asyncio.sleep(rng.uniform(0.0, 1.0))
                    coordinator.start()
                try:
                    async with asyncio.timeout(120):
                        result = await run.wait()
                except TimeoutError:
                    why = f"run {n} ({run.id}) did not finish (seed {seed})\n{coordinator.logs()}"
                    raise AssertionError(why) from None
                assert result.ok, f"run {n}: {result.cause} (seed {seed})\n{coordinator.logs()}"
                twice = {p.name: p.read_text().split() for p in marks.iterdir() if len(p.read_text().split()) != 1}
                assert not twice, f"run {n} ({run.id}): tasks executed more than once: {twice} (seed {seed})"
                assert sorted(p.name for p in marks.iterdir()) == sorted(wf.tasks)  # and each ran
                finished.append(run.id)
    finally:
        if coordinator.proc is not None:
            stop_process(coordinator.proc)
        for agent in agents:
            stop_process(agent)
    assert kills >= KILLS and len(finished) == KILLS // PER_RUN


async def test_a_submission_the_coordinator_never_stored_is_sent_again(mosquitto: Any, tmp_path: Path) -> None:
    """The coordinator is SIGKILLed and the broker restarted (without persistence, so the
    coordinator's session and anything queued for it are gone — as when it is killed between
    receiving a submission and storing it): the run handed over meanwhile reaches nobody. The client
    sends it again until the coordinator answers; the restarted coordinator runs it, once."""
    home, agent, coordinator = one_agent_stack(mosquitto.url, tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    try:
        async with dagon.connect(mosquitto.url, home=home, coordinator="main", answer_timeout=90) as client:
            coordinator.kill()
            await asyncio.to_thread(mosquitto.restart)
            wf = dagon.Workflow("lost-submission")
            wf.shell("only", f"echo $DAGON_ATTEMPT >> {marks / 'only'}")
            # nobody is subscribed to the inbox: the broker drops it; the client sends it again until
            # the restarted coordinator answers (submit returns once the run is stored)
            submitting = asyncio.create_task(client.submit(wf))
            await asyncio.sleep(1.0)
            coordinator.start()
            run = await submitting
            async with asyncio.timeout(90):
                result = await run.wait()
    finally:
        if coordinator.proc is not None:
            stop_process(coordinator.proc)
        stop_process(agent)
    assert result.ok, result.cause
    assert (marks / "only").read_text().split() == ["1"]
    assert "accepted run" in (home / "coordinator-2.log").read_text()
    assert "accepted run" not in (home / "coordinator-1.log").read_text()


async def test_a_run_whose_end_was_stored_but_never_published_is_announced_by_the_next_life(
    mosquitto: Any, tmp_path: Path
) -> None:
    """The store is written before anything is published (write-ahead): a coordinator killed in
    between leaves a run ended in its store whose final status never reached the broker, and a client
    waiting on the broker would wait for ever (seen once in 50 random kills). Simulated exactly: the
    run ends, its retained status is removed from the broker, the coordinator is SIGKILLed; the next
    life retains the final status again and a waiting client gets the result."""
    home, agent, coordinator = one_agent_stack(mosquitto.url, tmp_path)
    try:
        async with dagon.connect(mosquitto.url, home=home, coordinator="main", answer_timeout=90) as client:
            wf = dagon.Workflow("unannounced")
            wf.shell("only", "true")
            run = await client.submit(wf)
            async with asyncio.timeout(90):
                assert (await run.wait()).ok
        coordinator.kill()
        async with MqttTransport(mosquitto.url, client_id="eraser") as eraser:
            await eraser.publish(topics.run_status(run.id), b"", retain=True)  # as if never published
        assert topics.run_status(run.id) not in await retained_runs(mosquitto.url)
        coordinator.start()
        async with dagon.connect(mosquitto.url, home=home, coordinator="main", answer_timeout=90) as client:
            again = await client.attach(run.id)
            async with asyncio.timeout(60):
                result = await again.wait()
        found = await retained_runs(mosquitto.url)
    finally:
        if coordinator.proc is not None:
            stop_process(coordinator.proc)
        stop_process(agent)
    assert result.state.value == "succeeded", result.cause
    doc = decode_public(found[topics.run_status(run.id)], schema=SCHEMA_RUN_STATUS)
    assert (doc["state"], doc["tasks"], doc["counts"]) == ("succeeded", 1, {"succeeded": 1})
    assert "retained the final status of 1 run" in (home / "coordinator-2.log").read_text()
