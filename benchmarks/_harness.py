"""Shared benchmark plumbing: a real Mosquitto, real agent processes, a table.

Everything binds to 127.0.0.1 and every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

from dagon._keys import add_pin, agent_signer, coordinator_signer, enroll
from dagon._settings import dagon_home
from dagon.protocol import raw_public_key

__all__ = ["Agents", "free_port", "mosquitto", "print_table", "rss_mb", "workspace"]


def workspace() -> tempfile.TemporaryDirectory[str]:
    """Scratch space for the agents, under the user's home like an agent's default
    scratch (``$DAGON_HOME/scratch``). Not /tmp: on our VMs creating a file there
    costs ~10x more than under the home directory (measured: ~580 us vs ~76 us for
    a task directory with its three files). Override with DAGON_BENCH_DIR."""
    base = Path(os.environ.get("DAGON_BENCH_DIR") or Path.home() / ".cache" / "dagon-bench")
    base.mkdir(parents=True, exist_ok=True)
    # The coordinator's home too (keys, pinned agent keys, run store): fresh agents
    # get fresh keys, which a long-lived home would refuse as changed.
    os.environ["DAGON_HOME"] = str(base / "coordinator")
    shutil.rmtree(base / "coordinator", ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix="run-", dir=base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


STOCK_MOSQUITTO = "listener {port} 127.0.0.1\nallow_anonymous true\n"
"""What a user writes: a listener and anonymous access, every other option at Mosquitto's default
(``set_tcp_nodelay false``, ``max_queued_messages 1000``, no persistence)."""

TUNED_MOSQUITTO = STOCK_MOSQUITTO + "max_queued_messages 1000000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
"""The options docs/deployment recommends for a busy broker (``--tuned-broker``)."""


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tuned-broker``: measure against the tuned config instead of the stock one users start with."""
    parser.add_argument(
        "--tuned-broker",
        action="store_true",
        help="start Mosquitto with set_tcp_nodelay and large queues instead of its stock configuration",
    )


@contextlib.contextmanager
def mosquitto(*, tuned: bool = False) -> Iterator[str]:
    """A real Mosquitto on a free loopback port, stock configuration unless ``tuned``; yields its mqtt:// URL."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        sys.exit("mosquitto is not installed: run .ci/setup (or apt-get install mosquitto)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text((TUNED_MOSQUITTO if tuned else STOCK_MOSQUITTO).format(port=port))
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port)
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            _stop(proc)


class Agents:
    """``count`` real ``dagon-agent`` processes, each with its own home and scratch
    (``separate_hosts``: each also its own host id, so data between them goes over the network;
    ``code``: what ``python -c`` runs instead of ``agent_main()``, given the same arguments;
    ``env_for(i)``: extra environment of agent ``i``)."""

    def __init__(
        self,
        url: str,
        count: int,
        *,
        slots: int,
        root: Path,
        extra: Sequence[str] = (),
        separate_hosts: bool = False,
        code: str | None = None,
        env_for: Callable[[int], dict[str, str]] | None = None,
    ) -> None:
        self.url = url
        self.count = count
        self.slots = slots
        self.root = root
        self.extra = list(extra)
        self.separate_hosts = separate_hosts
        self.code = code or "from dagon.cli import agent_main; raise SystemExit(agent_main())"
        self.env_for = env_for
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Agents:
        # The benchmark's own coordinator (dagon.connect in this process) signs with
        # the key in its DAGON_HOME; enroll it with every agent and approve every agent's key with
        # the coordinator, as an operator would (`dagon-agent enroll`, `dagon agents approve`).
        coordinator_home = dagon_home()
        coordinator_signer(coordinator_home)
        for i in range(self.count):
            home = self.root / f"agent{i}"
            home.mkdir(parents=True, exist_ok=True)
            enroll(home, coordinator_home / "keys" / "coordinator.pub")
            pins = coordinator_home / "keys" / "known_agents"
            add_pin(pins, self.ids[i], raw_public_key(agent_signer(home).public_key))
            env = dict(os.environ, DAGON_HOME=str(home))
            if self.separate_hosts:
                env["DAGON_HOST_ID"] = f"bench-host-{i}"
            if self.env_for is not None:
                env.update(self.env_for(i))
            cmd = [
                sys.executable, "-c", self.code,
                "--broker", self.url, "--id", self.ids[i], "--slots", str(self.slots),
                "--scratch", str(home / "scratch"), *self.extra,
            ]  # fmt: skip
            with (home / "agent.log").open("wb") as log:
                self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        return self

    @property
    def ids(self) -> list[str]:
        # Unique per root: the coordinator pins each id to its first key, and every root has fresh keys.
        return [f"bench-{self.root.name}-{i}" for i in range(self.count)]

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            _stop(proc)

    def rss_mb(self) -> list[float]:
        return [rss_mb(p.pid) for p in self.procs]


def rss_mb(pid: int | None = None) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:,.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
