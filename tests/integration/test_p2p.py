"""Peer-to-peer staging between agent processes on different (declared) hosts, over a real Mosquitto."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

import dagon
from dagon.core import RunState

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def three_hosts(mosquitto: Any, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three agents that do not share a file system (as far as dagon knows): each its own host id."""
    procs = [start_agent(mosquitto.url, tmp_path, f"agent{i}", env={"DAGON_HOST_ID": f"host-{i}"}) for i in range(3)]
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc)


def pipeline() -> dagon.Workflow:
    wf = dagon.Workflow("p2p")
    wf.shell(
        "A", "mkdir out && head -c 8000000 /dev/urandom > out/big.bin && echo small > out/small.txt", agent="agent0"
    )
    wf.shell("B", "sha256sum < workflow:///A/out/big.bin | cut -c1-64 > b.txt", agent="agent1")
    wf.shell("C", "cat workflow:///B/b.txt workflow:///A/out/small.txt > c.txt", agent="agent2")
    return wf


async def test_data_crosses_three_agents_over_http(
    mosquitto: Any, three_hosts: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
        assert client.coordinator is not None
        async with asyncio.timeout(20):
            await client.coordinator.wait_for_agents(3)
        handle = await client.submit(pipeline(), keep_scratch=True)  # A is fetched after the run
        result = await handle.wait()
        fetched = await handle.fetch("C", "c.txt", tmp_path / "results")  # from agent2's data server
        fetched_dir = await handle.fetch("A", "out/*.txt", tmp_path / "results-a")
    assert result.state is RunState.SUCCEEDED, result.cause
    a, b, c = result["A"], result["B"], result["C"]
    assert (a.agent, b.agent, c.agent) == ("agent0", "agent1", "agent2")
    digest = hashlib.sha256((Path(a.workdir) / "out" / "big.bin").read_bytes()).hexdigest()
    assert (Path(c.workdir) / "c.txt").read_text() == f"{digest}\nsmall\n"
    assert (fetched / "c.txt").read_text() == f"{digest}\nsmall\n"
    assert [p.name for p in (fetched_dir / "out").iterdir()] == ["small.txt"]
    assert "pulled 1 file(s)" in b.cause and "from agent0 over http" in b.cause
    assert "pulled 2 file(s)" in c.cause and "from agent0, agent1 over http" in c.cause
    # pulled into the consumer's own scratch root: copies, not links into another agent's directory
    pulled = Path(b.workdir) / ".dagon" / "inputs" / "p2p" / "A" / "out" / "big.bin"
    assert pulled.is_file() and not pulled.is_symlink()
    assert pulled.stat().st_ino != (Path(a.workdir) / "out" / "big.bin").stat().st_ino
