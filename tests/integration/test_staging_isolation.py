"""No task can change what another task reads (issue 13, point 3): a consumer that appends to its
staged input changes its own copy only — its producer's file, that file's manifest and what a
second consumer reads stay as produced. Real ``dagon-agent`` process, real Mosquitto."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

import dagon

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto


@pytest.mark.parametrize("mode", ["", "copy", "hardlink", "symlink"])
async def test_a_consumer_appending_to_its_input_does_not_change_it_for_anyone_else(
    mosquitto: Any, tmp_path: Path, mode: str
) -> None:
    wf = dagon.Workflow("append")
    wf.shell("A", "echo produced > f.txt")
    # B appends to its input while C reads the same output at the same time (a gate keeps both
    # running together), and D reads it after B is done.
    gate = tmp_path / "gate"
    wf.shell("B", f"echo changed >> workflow:///A/f.txt; touch {gate}; cat workflow:///A/f.txt > b.txt",
             stage_mode=mode)  # fmt: skip
    wf.shell("C", f"while [ ! -e {gate} ]; do sleep 0.05; done; cat workflow:///A/f.txt > c.txt", stage_mode=mode)
    wf.shell("D", "cat workflow:///A/f.txt > d.txt", after=["B"], stage_mode=mode)
    agent = start_agent(mosquitto.url, tmp_path, "solo", slots=3)
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client", keep_scratch=True) as client:
            assert client.coordinator is not None
            async with asyncio.timeout(20):
                await client.coordinator.wait_for_agents(1)
            async with asyncio.timeout(60):
                result = await (await client.submit(wf)).wait()
    finally:
        stop_process(agent)
    assert result.ok, result.cause
    a = Path(result["A"].workdir)
    assert (a / "f.txt").read_text() == "produced\n"  # the producer's file is as it made it
    (entry,) = json.loads((a / ".dagon" / "manifest.json").read_text())
    assert entry["sha256"] == hashlib.sha256(b"produced\n").hexdigest()
    assert (Path(result["B"].workdir) / "b.txt").read_text() == "produced\nchanged\n"  # its own copy
    assert (Path(result["C"].workdir) / "c.txt").read_text() == "produced\n"
    assert (Path(result["D"].workdir) / "d.txt").read_text() == "produced\n"
