"""An agent nobody can connect to (NAT) hands its outputs over through the coordinator's relay."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

import pytest
from _keys import coordinator_security

import dagon
from dagon.agent import _runner as runner_module
from dagon.core import Coordinator, RunState
from dagon.core import _datasources as datasources_module
from dagon.protocol.transport import MemoryHub, pull

from ._stack import hub_agent as agent


async def test_outputs_of_an_unreachable_agent_travel_through_the_relay(tmp_path: Path) -> None:
    hub = MemoryHub()
    wf = dagon.Workflow("nat")
    wf.shell("sense", "mkdir out && head -c 2000000 /dev/urandom > out/reading.bin", agent="edge")
    wf.shell("analyse", "sha256sum < workflow:///sense/out/reading.bin | cut -c1-64 > digest.txt", agent="cloud")
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(
                connect=lambda will: hub.transport(will=will),
                coordinator_id="c",
                relay_dir=tmp_path / "relay",
                **coordinator_security(),
            )
        )
        edge = await stack.enter_async_context(agent(hub, tmp_path, "edge", host_id="behind-nat", reachable=False))
        await stack.enter_async_context(agent(hub, tmp_path, "cloud", host_id="datacentre"))
        await coordinator.wait_for_agents(2)
        run = await coordinator.submit(wf, keep_scratch=True)  # the producer's scratch is read afterwards
        result = await coordinator.wait(run)
        # a client fetching the unreachable agent's output gets it through the relay too
        source = coordinator.output_source(run, "sense", 1, "edge", "out")
        assert source.relay and source.url == coordinator.relay_url
        stats = await pull(source.url, source.token, tmp_path / "fetched", wait_for_upload=30)
        served_by_edge = edge._data.stats.requests
    assert result.state is RunState.SUCCEEDED, result.cause
    sense, analyse = result["sense"], result["analyse"]
    data = (Path(sense.workdir) / "out" / "reading.bin").read_bytes()
    assert (Path(analyse.workdir) / "digest.txt").read_text() == hashlib.sha256(data).hexdigest() + "\n"
    assert "from edge via the coordinator's relay" in analyse.cause
    assert served_by_edge == 0  # nobody connected to the unreachable agent
    (relayed,) = (tmp_path / "relay").rglob("reading.bin")
    assert relayed.read_bytes() == data
    assert stats.files == 1 and (tmp_path / "fetched" / "out" / "reading.bin").read_bytes() == data


async def test_without_a_relay_the_consumer_says_what_is_missing(tmp_path: Path) -> None:
    hub = MemoryHub()
    wf = dagon.Workflow("nat")
    wf.shell("sense", "echo 1 > r.txt", agent="edge")
    wf.shell("analyse", "cat workflow:///sense/r.txt", agent="cloud")
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(connect=lambda will: hub.transport(will=will), coordinator_id="c", **coordinator_security())
        )
        await stack.enter_async_context(agent(hub, tmp_path, "edge", host_id="behind-nat", reachable=False))
        await stack.enter_async_context(agent(hub, tmp_path, "cloud", host_id="datacentre"))
        await coordinator.wait_for_agents(2)
        result = await coordinator.wait(await coordinator.submit(wf))
    assert result.state is RunState.FAILED
    assert "serves no data" in result["analyse"].cause


async def test_long_staging_reports_progress_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "PROGRESS_EVERY", 0.02)
    hub = MemoryHub()
    wf = dagon.Workflow("progress")
    wf.shell("make", "head -c 60000000 /dev/urandom > big.bin", agent="a")
    wf.shell("use", "test -s workflow:///make/big.bin", agent="b")
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(connect=lambda will: hub.transport(will=will), coordinator_id="c", **coordinator_security())
        )
        await stack.enter_async_context(agent(hub, tmp_path, "a", host_id="one"))
        await stack.enter_async_context(agent(hub, tmp_path, "b", host_id="two"))
        await coordinator.wait_for_agents(2)
        run = await coordinator.submit(wf)
        events = [e async for e in coordinator.events(run)]
    notes = [e for e in events if e.task == "use" and e.cause.startswith("staging: ")]
    assert notes, [e.cause for e in events]
    assert all(e.state == e.old and e.agent == "b" for e in notes)  # informational: no state change
    assert "of 57.2 MiB" in notes[-1].cause


async def test_relayed_outputs_expire_after_their_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasources_module, "RELAY_KEEP", 0.0)
    hub = MemoryHub()

    def nat_pipeline(name: str) -> dagon.Workflow:
        wf = dagon.Workflow(name)
        wf.shell("sense", "echo 1 > r.txt", agent="edge")
        wf.shell("analyse", "cat workflow:///sense/r.txt", agent="cloud")
        return wf

    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(
                connect=lambda will: hub.transport(will=will),
                coordinator_id="c",
                relay_dir=tmp_path / "relay",
                **coordinator_security(),
            )
        )
        await stack.enter_async_context(agent(hub, tmp_path, "edge", host_id="behind-nat", reachable=False))
        await stack.enter_async_context(agent(hub, tmp_path, "cloud", host_id="datacentre"))
        await coordinator.wait_for_agents(2)
        first = await coordinator.submit(nat_pipeline("first"))
        assert (await coordinator.wait(first)).state is RunState.SUCCEEDED
        assert (tmp_path / "relay" / first).is_dir()
        second = await coordinator.submit(nat_pipeline("second"))
        assert (await coordinator.wait(second)).state is RunState.SUCCEEDED
        for _ in range(100):  # the expiry runs in a worker thread
            if not (tmp_path / "relay" / first).exists():
                break
            await asyncio.sleep(0.02)
    assert not (tmp_path / "relay" / first).exists()


async def test_the_relay_over_https_is_verified_with_the_agents_ca(tmp_path: Path) -> None:
    import ssl

    from dagon._brokerconfig import generate_broker_config

    pki = generate_broker_config(tmp_path / "pki", agents=["unused"], server_names=["127.0.0.1"])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "pki" / "server.crt", tmp_path / "pki" / "server.key")
    hub = MemoryHub()
    wf = dagon.Workflow("nat-tls")
    wf.shell("sense", "echo reading > r.txt", agent="edge")
    wf.shell("analyse", "cat workflow:///sense/r.txt > got.txt", agent="cloud")
    ca = {"data_tls_ca": str(pki.ca)}
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(
                connect=lambda will: hub.transport(will=will),
                coordinator_id="c",
                relay_dir=tmp_path / "relay",
                relay_tls=server,
                **coordinator_security(),
            )
        )
        assert coordinator.relay_url.startswith("https://127.0.0.1:")
        await stack.enter_async_context(agent(hub, tmp_path, "edge", host_id="nat", reachable=False, **ca))
        await stack.enter_async_context(agent(hub, tmp_path, "cloud", host_id="dc", **ca))
        await coordinator.wait_for_agents(2)
        result = await coordinator.wait(await coordinator.submit(wf))
    assert result.state is RunState.SUCCEEDED, result.cause
    assert (Path(result["analyse"].workdir) / "got.txt").read_text() == "reading\n"
    assert "via the coordinator's relay" in result["analyse"].cause
