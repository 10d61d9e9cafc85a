"""A task's processes never outlive its agent (issue 13, point 1): real ``dagon-agent`` processes,
real Mosquitto, real SIGKILL.

Every task records its shell's pid when it starts and writes its effect (``TASK ATTEMPT``)
to a shared file only once a gate file exists, from a subshell (a grandchild of the agent,
not the group leader). The gate opens only after the victim was killed and the task runs
again elsewhere: an orphan that survived would add a line for attempt 1.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from rich.console import Console

import dagon
from dagon._progress import follow, summary_table

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto


def gated_task(name: str, tmp: Path, *, daemon: bool = False) -> str:
    gate, effects, pids = tmp / "gate", tmp / "effects", tmp / "pids"
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    effect = f'echo "$DAGON_TASK $DAGON_ATTEMPT" >> {effects}'
    script = f"echo $$ > {pids}/{name}-$DAGON_ATTEMPT; ( {wait}; {effect} ) | cat"
    if daemon:  # also one that leaves the task's process group and session on purpose
        script = f"setsid bash -c '{wait}; echo \"daemon $DAGON_ATTEMPT\" >> {effects}' & {script}"
    return script


def lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines()) if path.exists() else []


def carrying(*needles: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds every ``NAME=value`` in ``needles``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X"):
            continue
        if all(n.encode() in environ for n in needles):
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


async def wait_until(check: Any, within: float, what: str) -> None:
    try:
        async with asyncio.timeout(within):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:.0f} s waiting for {what}") from None


def keeper_of(log: Path) -> int:
    match = re.search(r"keeper pid (\d+)", log.read_text())
    assert match, log.read_text()
    return int(match.group(1))


async def test_a_sigkilled_agents_tasks_die_with_it_and_run_once_elsewhere(
    mosquitto: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dagon.core._coordinator")
    (tmp_path / "pids").mkdir()
    names = [f"t{i}" for i in range(4)]
    wf = dagon.Workflow("orphans")
    for name in names:
        wf.shell(name, gated_task(name, tmp_path, daemon=name == "t0"))
    victim = start_agent(mosquitto.url, tmp_path, "victim", slots=4)
    survivor: subprocess.Popen[bytes] | None = None
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client", requeue_grace=1) as client:
            assert client.coordinator is not None
            async with asyncio.timeout(20):
                await client.coordinator.wait_for_agents(1)
            run = await client.submit(wf)
            screen = io.StringIO()  # the progress view and summary table of `dagon run`
            following = asyncio.ensure_future(follow(run, total=len(names), console=Console(file=screen)))
            first = [tmp_path / "pids" / f"{n}-1" for n in names]
            await wait_until(lambda: all(p.exists() for p in first), 30, "every task to start on the victim")
            assert len(carrying(f"DAGON_RUN={run.id}", "DAGON_ATTEMPT=1")) >= 8  # shells, subshells, the daemon
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            # The keeper kills every process of the victim's tasks, the setsid daemon included.
            await wait_until(lambda: not carrying(f"DAGON_RUN={run.id}", "DAGON_ATTEMPT=1"), 10,
                             "the victim's task processes to die")  # fmt: skip
            survivor = start_agent(mosquitto.url, tmp_path, "survivor", slots=4)
            second = [tmp_path / "pids" / f"{n}-2" for n in names]
            await wait_until(lambda: all(p.exists() for p in second), 60, "every task to start again elsewhere")
            (tmp_path / "gate").touch()
            async with asyncio.timeout(60):
                result = await following
    finally:
        (tmp_path / "gate").touch()  # whatever still waits ends (if this test failed)
        stop_process(victim)
        stop_process(survivor)
    assert result.ok, result.cause
    # Each effect once, from the second attempt; nothing from the killed one (nor its daemon).
    assert lines(tmp_path / "effects") == sorted([*(f"{n} 2" for n in names), "daemon 2"])
    log = (tmp_path / "victim" / "agent.log").read_text()
    assert re.search(r"keeper: agent pid \d+ ended; killed \d+ process\(es\)", log), log
    # The coordinator says which agent was lost and which tasks run again because of it (point 7).
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "agent victim lost (connection lost)" in said, said
    (requeued,) = [m for m in said if m.startswith("agent victim: 4 task(s) requeued")]
    assert all(f"{run.id}/{n} (attempt 1)" in requeued for n in names), requeued
    assert "not back within 1 s" in requeued
    # The summary table says which attempt was retried, where it ran and why (point 7).
    for n in names:
        (past,) = result[n].retries
        assert (past.attempt, past.agent) == (1, "victim") and "agent victim lost" in past.cause, past
    table = Console(file=screen, width=400)
    table.print(summary_table(result))
    assert "retried: attempt 1 on victim: agent victim lost (connection lost)" in screen.getvalue()
    # … and `dagon status` (text and --json) reads the same from the coordinator's store.
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    env["DAGON_HOME"] = str(tmp_path / "client")
    status = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())", "status", run.id]
    shown = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert shown.count("retried: attempt 1 on victim: agent victim lost (connection lost)") == len(names), shown
    doc = json.loads(subprocess.run([*status, "--json"], env=env, capture_output=True, text=True, timeout=60,
                                    check=True).stdout)  # fmt: skip
    for task in doc["task_list"]:
        assert (task["attempt"], task["agent"]) == (2, "survivor"), task
        (past,) = task["retries"]
        assert (past["attempt"], past["agent"]) == (1, "victim") and "agent victim lost" in past["cause"], past


async def test_a_restarted_agent_kills_what_its_previous_life_left_before_it_announces(
    mosquitto: Any, tmp_path: Path
) -> None:
    """The keeper is killed too (as by the OOM killer): the agent's next life, same id and home,
    finds the orphans in its ledger and kills them before it goes online."""
    (tmp_path / "pids").mkdir()
    wf = dagon.Workflow("phoenix")
    wf.shell("job", gated_task("job", tmp_path))
    agent = start_agent(mosquitto.url, tmp_path, "phoenix", slots=1)
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client", requeue_grace=1) as client:
            assert client.coordinator is not None
            async with asyncio.timeout(20):
                await client.coordinator.wait_for_agents(1)
            run = await client.submit(wf)
            await wait_until((tmp_path / "pids" / "job-1").exists, 30, "the task to start")
            shell = int((tmp_path / "pids" / "job-1").read_text())
            log = tmp_path / "phoenix" / "agent.log"
            keeper = keeper_of(log)
            os.kill(keeper, signal.SIGKILL)
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            await asyncio.sleep(1)  # nothing is left to kill them now
            orphans = carrying(f"DAGON_RUN={run.id}", "DAGON_ATTEMPT=1")
            assert alive(shell) and shell in orphans  # they survived both
            log.rename(log.with_name("agent-1.log"))
            agent = start_agent(mosquitto.url, tmp_path, "phoenix", slots=1)  # same id, same home
            await wait_until(lambda: log.exists() and " online: " in log.read_text(), 30, "the agent to come back")
            assert not any(alive(pid) for pid in orphans)  # dead before the agent said it was online
            text = log.read_text()
            assert text.index("its previous run left running") < text.index(" online: "), text
            assert f"{run.id}/job-1" in text
            await wait_until((tmp_path / "pids" / "job-2").exists, 60, "the task to run again")
            (tmp_path / "gate").touch()
            async with asyncio.timeout(60):
                result = await run.wait()
    finally:
        (tmp_path / "gate").touch()
        stop_process(agent)
    assert result.ok, result.cause
    assert lines(tmp_path / "effects") == ["job 2"]
