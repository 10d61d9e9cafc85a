"""A Raspberry Pi in the fleet: an aarch64 ``dagon-agent`` (Debian 12 arm64, Python 3.11 — Raspberry Pi
OS Bookworm's stack — under qemu-user, built by ``.ci/arm64-root``) beside an x86_64 agent process, on a
real Mosquitto. Emulation is ~10x slower than native: these tests check behaviour, never speed.

The root has its own file system and machine id, so data between the two agents crosses over HTTP
exactly as between two machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _broker import MOSQUITTO_MISSING, Mosquitto, free_port, missing, mosquitto_binary, stop_process
from integration._stack import start_agent
from integration.test_sensor_agents import SimulatedArduino

import dagon
from dagon._keys import coordinator_signer, coordinator_trust
from dagon.core import Coordinator, RunState
from dagon.protocol import AgentId
from dagon.protocol.transport import MqttTransport

from ._root import PiRoot, pi_root_or_missing

pytestmark = [pytest.mark.arm64, pytest.mark.mosquitto, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def pi() -> Iterator[PiRoot]:
    root = pi_root_or_missing()
    with root.mounted():
        yield root


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    binary = mosquitto_binary()
    if binary is None:
        missing(MOSQUITTO_MISSING)
    # 127.0.0.1: the chroot shares the host's network namespace.
    server = Mosquitto(binary=binary, workdir=tmp_path / "mosquitto", port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _coordinator(url: str, home: Path) -> Coordinator:
    return Coordinator(
        connect=lambda will: MqttTransport(url, client_id="coordinator", will=will),
        coordinator_id="main",
        signer=coordinator_signer(home),
        trust=coordinator_trust(home),
    )


def _take_lines(marker: Path) -> list[str]:
    """The lines a task appended to ``marker`` (the file is removed)."""
    try:
        lines = marker.read_text().split()
    except FileNotFoundError:
        return []
    marker.unlink()
    return lines


def test_the_root_is_a_raspberry_pi_os_bookworm_stack(pi: PiRoot) -> None:
    out = pi.run("/opt/dagon/bin/python", "-c", "import platform, sys; print(platform.machine(), sys.version_info[:2])")
    assert out.split() == ["aarch64", "(3,", "11)"]
    assert "aarch64" in pi.run("/usr/bin/uname", "-m")


async def test_workflow_across_aarch64_and_x86_64_with_staging_both_ways(
    pi: PiRoot, broker: Mosquitto, tmp_path: Path
) -> None:
    home = tmp_path / "client"
    coordinator_signer(home)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_agent(broker.url, tmp_path, "x86"))
        procs.append(pi.start_agent(broker.url, home, "pi", log=tmp_path / "pi.log"))
        wf = dagon.Workflow("mixed-fleet")
        wf.shell("capture", "uname -m > arch.txt; head -c 200000 /dev/urandom > data.bin", arch="aarch64")
        wf.shell(
            "fog",
            "cat workflow:///capture/arch.txt > seen.txt; uname -m >> seen.txt;"
            " sha256sum < workflow:///capture/data.bin | cut -c1-64 >> seen.txt",
            arch="x86_64",
        )
        wf.shell("edge", "cat workflow:///fog/seen.txt > final.txt; uname -m >> final.txt", arch="aarch64")
        async with _coordinator(broker.url, home) as coordinator:
            async with asyncio.timeout(180):
                await coordinator.wait_for_agents(2)
            archs = {a: coordinator.engine.agents[AgentId(a)].capabilities.arch for a in ("x86", "pi")}
            result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    finally:
        for proc in procs:
            stop_process(proc)
    assert archs == {"x86": "x86_64", "pi": "aarch64"}
    assert result.state is RunState.SUCCEEDED, (result.cause, (tmp_path / "pi.log").read_text()[-3000:])
    assert (result["capture"].agent, result["fog"].agent, result["edge"].agent) == ("pi", "x86", "pi")
    data = pi.host_path(result["capture"].workdir) / "data.bin"
    final = (pi.host_path(result["edge"].workdir) / "final.txt").read_text().split()
    assert final == ["aarch64", "x86_64", hashlib.sha256(data.read_bytes()).hexdigest(), "aarch64"]
    # Two file systems, two hosts: both hand-offs went over the agents' data servers.
    assert "from pi over http" in result["fog"].cause
    assert "from x86 over http" in result["edge"].cause


async def test_a_killed_pi_agent_s_task_is_requeued_on_the_x86_64_agent(
    pi: PiRoot, broker: Mosquitto, tmp_path: Path
) -> None:
    home = tmp_path / "client"
    coordinator_signer(home)
    marker = f"/tmp/dagon-arm64-{uuid.uuid4().hex}"
    pi_marker, host_marker = pi.host_path(marker), Path(marker)
    wf = dagon.Workflow("requeue")
    # Written at the end: a run that survived its agent would show as a line in the root's file.
    wf.shell("long", f"sleep 25; uname -m >> {marker}")
    pi_agent: subprocess.Popen[bytes] | None = None
    x86_agent: subprocess.Popen[bytes] | None = None
    try:
        pi_agent = pi.start_agent(broker.url, home, "pi", log=tmp_path / "pi.log")
        async with _coordinator(broker.url, home) as coordinator:
            async with asyncio.timeout(180):
                await coordinator.wait_for_agents(1)
            run = await coordinator.submit(wf)
            async with asyncio.timeout(120):
                async for event in coordinator.events(run):
                    if event.task == "long" and event.state == "running":
                        assert event.agent == "pi"
                        started = asyncio.get_running_loop().time()
                        break
            x86_agent = start_agent(broker.url, tmp_path, "x86")
            async with asyncio.timeout(60):
                await coordinator.wait_for_agents(2)
            os.kill(pi_agent.pid, signal.SIGKILL)  # the qemu-aarch64 process that runs the agent
            pi_agent.wait(10)
            async with asyncio.timeout(180):
                result = await coordinator.wait(run)
    finally:
        for proc in (pi_agent, x86_agent):
            if proc is not None:
                stop_process(proc)
        host_lines = _take_lines(host_marker)
    assert result.state is RunState.SUCCEEDED, result.cause
    assert result["long"].agent == "x86"
    assert result["long"].attempt >= 2
    assert host_lines == ["x86_64"]
    # Past the end of the pi's attempt (25 s after it started, with emulation's slack): an orphan
    # that outlived its agent would have written its line by now.
    await asyncio.sleep(max(0.0, started + 40 - asyncio.get_running_loop().time()))
    assert _take_lines(pi_marker) == [], "the killed agent's task outlived it and ran to its end"


def test_doctor_on_the_pi_reports_aarch64_and_its_serial_port(pi: PiRoot, broker: Mosquitto) -> None:
    home = pi.fresh_home("doctor")
    with SimulatedArduino(period=0.2, link=pi.path / "dev-ttyACM0"):
        out = pi.run(
            "/opt/dagon/bin/dagon-agent", "doctor", "--json", "--broker", broker.url,
            env={"DAGON_HOME": pi.inside(home), "DAGON_DEVICES": "serial:/dev-ttyACM0"},
            ok=(0, 1),  # 1: some row fails (this home is not enrolled)
        )  # fmt: skip
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["platform"]["status"] == "ok" and rows["platform"]["detail"].startswith("aarch64"), rows["platform"]
    assert rows["python"]["detail"].startswith("3.11."), rows["python"]
    assert rows["broker"]["status"] == "ok", rows["broker"]
    assert "/dev-ttyACM0" in rows["sensors"]["detail"], rows["sensors"]


def test_the_pi_agent_notifies_systemd_ready_and_watchdog(pi: PiRoot, broker: Mosquitto, tmp_path: Path) -> None:
    home = tmp_path / "client"
    coordinator_signer(home)
    path = pi.path / "run" / f"notify-{uuid.uuid4().hex[:8]}.sock"
    path.parent.mkdir(exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(120)  # an emulated agent starts in tens of seconds
    env = {"NOTIFY_SOCKET": pi.inside(path), "WATCHDOG_USEC": "4000000"}
    proc = pi.start_agent(broker.url, home, "svc", log=tmp_path / "svc.log", env=env)
    try:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1"), ready
        sock.settimeout(30)
        assert "WATCHDOG=1" in [sock.recv(4096).decode() for _ in range(3)]
        proc.send_signal(signal.SIGTERM)
        while (message := sock.recv(4096).decode()) == "WATCHDOG=1" or message.startswith("STATUS="):
            pass
        assert message.startswith("STOPPING=1"), message
        assert proc.wait(60) == 0
    finally:
        stop_process(proc)
        sock.close()
        path.unlink(missing_ok=True)


async def test_a_sensor_on_the_pi_feeds_a_fog_task_on_x86_64(pi: PiRoot, broker: Mosquitto, tmp_path: Path) -> None:
    home = tmp_path / "client"
    coordinator_signer(home)
    procs: list[subprocess.Popen[bytes]] = []
    with SimulatedArduino(period=0.1, link=pi.path / "ttyACM0"):
        try:
            procs.append(start_agent(broker.url, tmp_path, "fog"))
            procs.append(
                pi.start_agent(broker.url, home, "pi", log=tmp_path / "pi.log", args=("--devices", "serial:/ttyACM0"))
            )
            wf = dagon.Workflow("edge-fog")
            wf.sensor("capture", "serial:///ttyACM0?baud=9600", duration=60, count=10, parse="arduino")
            wf.shell("preprocess", "wc -l < workflow:///capture/readings.jsonl > n.txt; uname -m >> n.txt",
                     arch="x86_64")  # fmt: skip
            async with _coordinator(broker.url, home) as coordinator:
                async with asyncio.timeout(180):
                    await coordinator.wait_for_agents(2)
                result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
        finally:
            for proc in procs:
                stop_process(proc)
    assert result.state is RunState.SUCCEEDED, (result.cause, (tmp_path / "pi.log").read_text()[-3000:])
    assert result["capture"].agent == "pi"  # the only agent with the port
    rows = (pi.host_path(result["capture"].workdir) / "readings.jsonl").read_text().splitlines()
    assert len(rows) == 10 and all("humidity" in json.loads(row) for row in rows)
    assert (Path(result["preprocess"].workdir) / "n.txt").read_text().split() == ["10", "x86_64"]
