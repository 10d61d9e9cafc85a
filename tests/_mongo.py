"""A real nx-27017 process for tests: a MongoDB wire-protocol server on SQLite (not mongod).

No real mongod can be installed on our machines; nx-27017 speaks the MongoDB wire
protocol, so pymongo's ``AsyncMongoClient`` is exercised for real (connection pool,
server selection, ``bulk_write``, indexes, network errors when the process is killed).
Started and stopped by PID; ``kill()`` is SIGKILL, ``start()`` again reuses the port
(and the database file, when one is given).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from _broker import free_port, missing

__all__ = ["NX_MISSING", "NxMongo", "nx_binary"]

NX_MISSING = "nx-27017 not installed; pip install the test extra (.ci/setup does)"


def nx_binary() -> str | None:
    """The ``nx-27017`` console script of this interpreter's environment (or on PATH)."""
    beside = Path(sys.executable).parent / "nx-27017"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nx-27017")


class NxMongo:
    """One nx-27017 server on 127.0.0.1.

    Args:
        workdir: for its log and pid files (created).
        db: ``"memory"`` or a SQLite file path (kept across ``kill()``/``start()``).
        port: 0 picks a free one.
    """

    def __init__(self, workdir: Path, *, db: str = "memory", port: int = 0) -> None:
        binary = nx_binary()
        if binary is None:
            missing(NX_MISSING)
        self.binary = binary
        self.db = db
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "nx-27017.log"
        self.pidfile = workdir / "nx-27017.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            raise RuntimeError("nx-27017 is already running")
        cmd = [
            self.binary, "--host", "127.0.0.1", "-p", str(self.port), "--db", self.db,
            "--log-file", str(self.log), "--pid-file", str(self.pidfile),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise RuntimeError(f"nx-27017 exited with status {code} at start; see {self.log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nx-27017 did not listen on 127.0.0.1:{self.port} within {timeout} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL (a crash: no goodbye to clients), reaped."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; always reaped; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
