"""sd_notify against real datagram sockets: readiness, status, the watchdog period, a blocked loop, and the
real ``dagon-agent`` notifying through a socket the way systemd's manager reads it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

from dagon.agent._sdnotify import Notifier, watchdog_interval

AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound where systemd would put $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield str(path), sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def receive(sock: socket.socket, within: float = 10.0) -> str:
    sock.settimeout(within)
    return sock.recv(4096).decode()


def test_ready_status_stopping_on_a_path_socket(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier(path)
    assert n.enabled
    assert n.ready("1 running\nsecond line")
    assert receive(sock) == "READY=1\nSTATUS=1 running second line"  # one datagram, newlines flattened
    assert n.status("x" * 5000)
    assert receive(sock) == "STATUS=" + "x" * 1024
    assert n.stopping()
    assert receive(sock) == "STOPPING=1"
    n.close()


def test_abstract_socket() -> None:
    name = f"dagon-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        n = Notifier("@" + name)
        assert n.ready()
        assert receive(sock) == "READY=1"
        n.close()


def test_disabled_and_broken_sockets_never_raise(tmp_path: Path) -> None:
    assert not Notifier(None).notify("READY=1")
    assert not Notifier("relative/path").enabled  # not a path systemd would give: ignored
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert gone.enabled and not gone.ready() and not gone.ready()  # logged once, never raised
    assert gone.sent == 0
    gone.close()


def test_environment_is_read_and_removed() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()), "KEEP": "1"}
    n = Notifier.from_environ(env)
    assert n.address == "/run/x" and n.watchdog == 1.5  # pings at half the watchdog timeout
    assert env == {"KEEP": "1"}  # tasks started later do not inherit the agent's systemd socket
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None  # meant for another pid
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


async def test_watchdog_pings_from_the_loop_and_none_while_it_is_blocked(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier(path, watchdog=watchdog_interval({"WATCHDOG_USEC": "100000"}))
    assert n.watchdog == 0.05
    task = asyncio.create_task(n.watchdog_loop(lambda: "2 running", status_every=60))
    try:
        messages: list[str] = []
        while sum(m == "WATCHDOG=1" for m in messages) < 4:
            await asyncio.sleep(0.02)
            messages += drain(sock)
        assert messages[0] == "WATCHDOG=1" and messages[1] == "STATUS=2 running"
        drain(sock)
        time.sleep(0.5)  # noqa: ASYNC251 - the loop is stuck on purpose: ten ping periods pass without a ping
        assert drain(sock) == []
        await asyncio.sleep(0.2)  # unstuck: pings resume
        assert "WATCHDOG=1" in drain(sock)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        n.close()


async def test_a_start_waiting_for_its_broker_extends_the_start_timeout_from_the_loop(
    listener: tuple[str, socket.socket],
) -> None:
    """systemd's TimeoutStartSec= must not kill an agent that waits for a broker still booting: the
    extensions come from the event loop (none during the first period, none while it is blocked)."""
    path, sock = listener
    n = Notifier(path)
    task = asyncio.create_task(n.starting_loop("waiting for the broker mqtt://pi:1883", every=0.05))
    try:
        assert drain(sock) == []  # a quick start sends READY only
        messages: list[str] = []
        while len(messages) < 3:
            await asyncio.sleep(0.02)
            messages += drain(sock)
        assert set(messages) == {"EXTEND_TIMEOUT_USEC=90000000\nSTATUS=waiting for the broker mqtt://pi:1883"}
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is stuck on purpose: no extension while it is
        assert drain(sock) == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        n.close()


@pytest.mark.mosquitto
def test_the_agent_notifies_ready_watchdog_and_stopping(
    mosquitto: Any, listener: tuple[str, socket.socket], tmp_path: Path
) -> None:
    path, sock = listener
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGON_")}
    env.update(DAGON_HOME=str(tmp_path / "home"), NOTIFY_SOCKET=path, WATCHDOG_USEC="2000000")
    proc = subprocess.Popen(
        [*AGENT, "--broker", mosquitto.url, "--id", "svc", "--insecure", "--runtimes", "none"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        ready = receive(sock, within=30)
        assert ready.startswith("READY=1\nSTATUS=0 running"), ready
        assert "broker connected" in ready
        seen = [receive(sock) for _ in range(2)]
        assert "WATCHDOG=1" in seen
        proc.send_signal(signal.SIGTERM)
        while (message := receive(sock)) == "WATCHDOG=1" or message.startswith("STATUS="):
            pass
        assert message.startswith("STOPPING=1"), message
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


async def test_the_ping_period_is_half_the_watchdog_and_status_goes_out_when_it_changes(
    listener: tuple[str, socket.socket],
) -> None:
    path, sock = listener
    n = Notifier(path, watchdog=watchdog_interval({"WATCHDOG_USEC": "30000000"}))  # WatchdogSec=30
    pauses: list[float] = []
    sent: list[str] = []
    states = iter(["idle", "idle", "idle", "1 running", "1 running"] + ["x"] * 100)

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        sent.extend(drain(sock))  # as systemd reads them (a datagram queue holds only a few)
        if len(pauses) == 12:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await n.watchdog_loop(lambda: next(states), status_every=20, sleep=sleep)
    assert pauses == [15.0] * 12  # a ping every 15 s: half of WatchdogSec, so one late ping is no restart
    assert sent.count("WATCHDOG=1") == 12
    # The status is looked at every 20 s (every second 15 s pass) and sent only when it changed.
    assert [m for m in sent if m.startswith("STATUS=")] == ["STATUS=idle", "STATUS=1 running", "STATUS=x"]
    n.close()
