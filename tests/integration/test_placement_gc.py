"""Tier 3: placement and scratch garbage collection with three ``dagon-agent`` processes on a real Mosquitto.

All three agents run on this one host (same host id), so data locality is exercised
at the agent level here (the bytes a producer left in one agent's scratch root
draw the consumer to that agent); the host-level preference is covered by the
engine's unit tests with agents announcing different host ids.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

import dagon
from dagon.core import ValidationError

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto

AGENTS = ("agent0", "agent1", "agent2")


@pytest.fixture
def three_agents(mosquitto: Any, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        start_agent(mosquitto.url, tmp_path, name, args=["--labels", f"role={'gpu' if i == 0 else 'cpu'}"])
        for i, name in enumerate(AGENTS)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc)


def task_dirs(tmp: Path, run: str) -> set[tuple[str, str]]:
    """(agent, task-attempt) of every task directory of ``run`` left in each agent's scratch root."""
    found: set[tuple[str, str]] = set()
    for agent in AGENTS:
        root = tmp / agent / "scratch" / run
        if root.is_dir():
            found.update((agent, p.name) for p in root.iterdir())
    return found


def pipeline(name: str) -> dagon.Workflow:
    wf = dagon.Workflow(name)
    wf.shell("big", "head -c 3000000 /dev/zero > out.bin", agent="agent2")
    wf.shell("small", "echo tiny > out.bin", agent="agent1")
    wf.shell("use", "cat workflow:///big/out.bin workflow:///small/out.bin | wc -c > n.txt")
    wf.shell("kept", "echo keep > k.txt", keep=True, agent="agent1")
    wf.shell("reader", "cat workflow:///kept/k.txt > r.txt")
    wf.shell("gpu", "cat workflow:///reader/r.txt > g.txt", labels={"role": "gpu"})
    return wf


async def wait_for_dirs(tmp: Path, run: str, expected: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Deletion messages travel after the run's end: wait (bounded) for the filesystem to settle."""
    found = task_dirs(tmp, run)
    for _ in range(100):
        if found == expected:
            break
        await asyncio.sleep(0.1)
        found = task_dirs(tmp, run)
    return found


async def test_gc_leaves_exactly_the_kept_outputs_and_locality_places_next_to_data(
    mosquitto: Any, three_agents: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
        coordinator = client.coordinator
        assert coordinator is not None
        async with asyncio.timeout(20):
            await coordinator.wait_for_agents(3)

        # A task no known agent can ever satisfy fails at submission, naming it and why.
        bad = dagon.Workflow("bad")
        bad.shell("arm-only", "true", arch="no-such-arch")
        with pytest.raises(ValidationError, match=r"task 'arm-only'.*needs arch no-such-arch"):
            await client.submit(bad)

        handle = await client.submit(pipeline("gcflow"))
        result = await handle.wait()
        assert result.ok, result.cause
        agents = {name: t.agent or "" for name, t in result.tasks.items()}
        assert agents["use"] == "agent2"  # next to its 3 MB input, not on the agent with the tiny one
        assert agents["gpu"] == "agent0"  # the only agent labelled role=gpu
        assert (Path(result["use"].workdir) / "n.txt").read_text().strip() == "3000005"
        expected = {
            (agents["use"], "use-1"),
            (agents["kept"], "kept-1"),  # declared output (keep=True), though it had a consumer
            (agents["gpu"], "gpu-1"),  # final output
        }
        assert await wait_for_dirs(tmp_path, handle.id, expected) == expected
        # 'reader' was read by 'gpu' (deleted after it succeeded); 'big' and 'small' after 'use'.
        peak = coordinator.engine.gc.peak(handle.id)
        assert peak["agent2"] >= 3_000_000

        # The same pipeline with keep_scratch keeps every task directory.
        kept = await client.submit(pipeline("gcflow"), keep_scratch=True)
        result2 = await kept.wait()
        assert result2.ok, result2.cause
        everything = {(t.agent or "", f"{name}-{t.attempt}") for name, t in result2.tasks.items()}
        await asyncio.sleep(1.0)  # any (wrong) deletion would have arrived by now
        assert task_dirs(tmp_path, kept.id) == everything

        # Coordinator.collect_garbage: leftovers of a finished run go, whole.
        assert await coordinator.collect_garbage([handle.id]) == [handle.id]
        assert await wait_for_dirs(tmp_path, handle.id, set()) == set()
        assert task_dirs(tmp_path, kept.id) == everything

    # `dagon gc` where the coordinator's home is: its store says which runs are finished.
    env = dict(os.environ, DAGON_HOME=str(tmp_path / "client"))
    cli = [
        sys.executable,
        "-c",
        "from dagon.cli import main; raise SystemExit(main())",
        "gc",
        "--broker",
        mosquitto.url,
    ]
    done = await asyncio.to_thread(subprocess.run, cli, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "asked 3 agent(s)" in done.stdout
    assert await wait_for_dirs(tmp_path, kept.id, set()) == set()

    # The retained run status carries each agent's peak scratch footprint; `dagon status` shows it.
    status = [*cli[:3], "status", handle.id, "--broker", mosquitto.url]
    wide = dict(env, COLUMNS="200")  # rich wraps at 80 columns without a terminal
    shown = await asyncio.to_thread(subprocess.run, status, env=wide, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "peak scratch (task outputs):" in shown.stdout
    assert f"agent2 {peak['agent2']:,} B" in shown.stdout
