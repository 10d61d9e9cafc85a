"""Explicit checkpoints: outputs copied to the coordinator's durable storage outlive their agent."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from _keys import coordinator_security

import dagon
from dagon.core import Coordinator, RunState, TaskState
from dagon.protocol.transport import MemoryHub

from ._stack import hub_agent as agent


def checkpointed(name: str, flag: Path) -> dagon.Workflow:
    """`a` (a checkpoint) on edge; `b` on cloud reads it once `flag` exists (edge is gone by then)."""
    wf = dagon.Workflow(name)
    wf.shell("a", "mkdir out && head -c 300000 /dev/urandom > out/data.bin", agent="edge", checkpoint=True)
    wf.shell("gate", f"while [ ! -e {flag} ]; do sleep 0.05; done", agent="cloud")
    wf.shell("b", "cp workflow:///a/out/data.bin copy.bin", agent="cloud", after=["gate"])
    return wf


async def test_a_checkpoint_is_read_from_storage_after_its_agent_is_gone(tmp_path: Path) -> None:
    hub = MemoryHub()
    flag = tmp_path / "go"
    wf = checkpointed("ckpt", flag)
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(
                connect=lambda will: hub.transport(will=will),
                coordinator_id="c",
                relay_dir=tmp_path / "home" / "relay",
                **coordinator_security(),
            )
        )
        edge = agent(hub, tmp_path, "edge", host_id="edge-host")
        await edge.__aenter__()
        try:
            await stack.enter_async_context(agent(hub, tmp_path, "cloud", host_id="cloud-host"))
            await coordinator.wait_for_agents(2)
            run = await coordinator.submit(wf)
            saved = tmp_path / "home" / "checkpoints" / run / "a-1"
            async with asyncio.timeout(30):
                while not (saved / "out" / "data.bin").exists() or not list((saved / ".dagon").glob("*")):
                    await asyncio.sleep(0.05)
        finally:
            await edge.__aexit__(None, None, None)  # the producer's agent is gone for good
        async with asyncio.timeout(10):
            while coordinator.engine.agents[dagon.protocol.AgentId("edge")].online:
                await asyncio.sleep(0.05)
        flag.touch()
        async with asyncio.timeout(30):
            result = await coordinator.wait(run)
    assert result.state is RunState.SUCCEEDED, result.cause
    assert result["a"].attempt == 1  # not regenerated: its checkpoint served the consumer
    assert coordinator.engine.regenerated == 0
    assert "via the coordinator's relay" in result["b"].cause
    original = (saved / "out" / "data.bin").read_bytes()
    assert (Path(result["b"].workdir) / "copy.bin").read_bytes() == original
    assert coordinator.engine.runs[run].tasks["a"].state is TaskState.SUCCEEDED


async def test_a_checkpoint_store_agent_keeps_the_copy_when_the_coordinator_has_no_storage(tmp_path: Path) -> None:
    hub = MemoryHub()
    flag = tmp_path / "go"
    wf = checkpointed("ckpt-agent", flag)
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(connect=lambda will: hub.transport(will=will), coordinator_id="c", **coordinator_security())
        )  # no relay_dir: no storage of its own
        vault = await stack.enter_async_context(
            agent(hub, tmp_path, "vault", host_id="vault-host", checkpoint_store=True, labels="role=vault")
        )
        edge = agent(hub, tmp_path, "edge", host_id="edge-host")
        await edge.__aenter__()
        try:
            await stack.enter_async_context(agent(hub, tmp_path, "cloud", host_id="cloud-host"))
            await coordinator.wait_for_agents(3)
            assert vault.capabilities.checkpoint_store
            run = await coordinator.submit(wf)
            saved = tmp_path / "vault" / "scratch" / ".dagon-checkpoints" / run / "a-1"
            async with asyncio.timeout(30):
                while not (saved / ".dagon" / "manifest.json").exists():
                    await asyncio.sleep(0.05)
        finally:
            await edge.__aexit__(None, None, None)
        flag.touch()
        async with asyncio.timeout(30):
            result = await coordinator.wait(run)
    assert result.state is RunState.SUCCEEDED, result.cause
    assert result["a"].attempt == 1 and coordinator.engine.regenerated == 0
    assert (Path(result["b"].workdir) / "copy.bin").read_bytes() == (saved / "out" / "data.bin").read_bytes()
    assert vault._data.stats.requests >= 1  # the consumer pulled from the vault
