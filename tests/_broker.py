"""A real Mosquitto broker process for tests, started and stopped by PID.

Used by the ``mosquitto`` fixture in ``conftest.py``; importable by tests for
type annotations (``from _broker import Mosquitto``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "IN_CI",
    "MOSQUITTO_MISSING",
    "Mosquitto",
    "free_port",
    "missing",
    "mosquitto_binary",
    "stop_process",
    "wait_port",
]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MOSQUITTO_MISSING = "mosquitto not installed; run .ci/setup"


def missing(reason: str) -> NoReturn:
    """A real component this test needs is not here: a failure in CI (``.ci/setup`` installs it),
    a skip on a developer's machine."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    # Debian installs the broker in /usr/sbin, which is not on every user's PATH.
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


class Mosquitto:
    """One Mosquitto 2 broker on 127.0.0.1; ``restart()`` keeps the port.

    Args:
        binary: path of the ``mosquitto`` executable.
        workdir: directory for its config file and log (created).
        port: listening port; 0 picks a free one.
        config: use this configuration file as it is (it must listen on ``port``).
        host: address to listen on (only loopback or an address of a namespace bridge the test made).
        persistence: keep sessions, queued QoS 1 messages and retained messages across a restart
            (in ``workdir/data/``, saved when the broker stops).
    """

    def __init__(
        self,
        *,
        binary: str,
        workdir: Path,
        port: int = 0,
        config: Path | None = None,
        host: str = "127.0.0.1",
        persistence: bool = False,
    ) -> None:
        self.binary = binary
        self.host = host
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config or workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        if config is not None:
            return
        store = "persistence false\n"
        if persistence:
            (workdir / "data").mkdir(exist_ok=True)
            store = f"persistence true\npersistence_location {workdir / 'data'}/\n"
            if os.geteuid() == 0:
                # Run as root, mosquitto drops to its own user, which cannot write into
                # pytest's private tmp dirs: keep root (loopback-only test broker).
                store += "user root\n"
        self.config.write_text(
            f"listener {self.port} {host}\n"
            "allow_anonymous true\n"
            f"{store}"
            # The default queue (1000) drops messages for slow subscribers in bursts.
            "max_queued_messages 100000\n"
            # 0 = no limit on outgoing QoS 1/2 messages in flight (default 20);
            # MQTT 5 clients still cap it with their Receive Maximum.
            "max_inflight_messages 0\n"
            # stderr goes to our log file: mosquitto drops root privileges before it
            # would open a log_dest file, and pytest's tmp dirs are private (0700).
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("mosquitto is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"mosquitto exited with status {code} at start: {self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout} s")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (connected clients see a broker restart)."""
        self.stop()
        self.start()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-5:]) or "(no log)"
        except OSError:
            return "(no log)"


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, SIGKILL after ``timeout``, always reaped (by PID, never by name)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
