"""Agents on separate network "hosts" (namespaces, own addresses): data crosses between them over
HTTP, and an unreachable one goes through the relay. Real Mosquitto, real agent processes."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _broker import MOSQUITTO_MISSING, Mosquitto, free_port, missing, mosquitto_binary, stop_process

import dagon
from dagon._keys import coordinator_signer, coordinator_trust
from dagon.core import Coordinator, RunState
from dagon.protocol.transport import MqttTransport

from ._netns import Hosts, available
from ._stack import start_agent

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    why = available()
    if why is not None:
        missing(why)
    made = Hosts(3).open()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def broker(hosts: Hosts, tmp_path: Path) -> Iterator[Mosquitto]:
    binary = mosquitto_binary()
    if binary is None:
        missing(MOSQUITTO_MISSING)
    # On the bridge's own address: reachable from the namespaces, not from outside the machine.
    server = Mosquitto(binary=binary, workdir=tmp_path / "mosquitto", host=hosts.gateway, port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def test_pipeline_across_three_namespaced_hosts(hosts: Hosts, broker: Mosquitto, tmp_path: Path) -> None:
    home = tmp_path / "client"
    coordinator_signer(home)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            extra = ["--data-host", hosts.address(i), *(["--unreachable"] if i == 2 else [])]
            agents.append(
                start_agent(broker.url, tmp_path, f"ns{i}", args=extra, prefix=hosts.exec_prefix(i),
                            env={"DAGON_HOST_ID": f"netns-{i}"})
            )  # fmt: skip
        coordinator = Coordinator(
            connect=lambda will: MqttTransport(broker.url, client_id="coordinator", will=will),
            coordinator_id="main",
            signer=coordinator_signer(home),
            trust=coordinator_trust(home),
            relay_dir=home / "relay",
            relay_host=hosts.gateway,  # the namespaces reach the relay on the bridge
        )
        wf = dagon.Workflow("continuum")
        wf.shell("A", "head -c 3000000 /dev/urandom > a.bin; hostname -I > where.txt", agent="ns0")
        wf.shell("B", "sha256sum < workflow:///A/a.bin | cut -c1-64 > b.txt", agent="ns1")
        wf.shell("C", "cat workflow:///B/b.txt > c.txt; echo edge >> c.txt", agent="ns2")
        wf.shell("D", "cat workflow:///C/c.txt workflow:///A/where.txt > d.txt", agent="ns0")
        async with coordinator:
            async with asyncio.timeout(30):
                await coordinator.wait_for_agents(3)
            caps = {str(a): view.capabilities for a, view in coordinator.engine.agents.items()}
            # keep_scratch: the test reads the intermediate A/a.bin afterwards
            result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    finally:
        for proc in agents:
            stop_process(proc)
    assert result.state is RunState.SUCCEEDED, result.cause
    assert caps["ns1"].data_url == f"http://{hosts.address(1)}:{caps['ns1'].data_url.rsplit(':', 1)[1]}"
    a_dir, d_dir = Path(result["A"].workdir), Path(result["D"].workdir)
    digest = hashlib.sha256((a_dir / "a.bin").read_bytes()).hexdigest()
    lines = (d_dir / "d.txt").read_text().split()
    assert lines[:2] == [digest, "edge"]
    assert hosts.address(0) in lines[2:]  # A ran inside the first namespace
    assert "from ns0 over http" in result["B"].cause
    assert "from ns1 over http" in result["C"].cause
    assert "from ns2 via the coordinator's relay" in result["D"].cause
