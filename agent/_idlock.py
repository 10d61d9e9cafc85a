"""One process per agent id and home: ``<home>/agent-<id>.lock``, held with ``flock`` for the agent's life.

Two agents with one id knock each other off the broker (same MQTT client id), share a
result spool and would kill each other's tasks as "left over from a previous life". The
lock makes the second one refuse to start, naming the first. The kernel releases it when
the holder ends in any way (SIGKILL included), so a stale file never blocks a restart.
Agents on different machines sharing an id are not detected here: give each its own
``--id`` (the default, a stable id kept in the home, is unique per home).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from dagon.protocol import ConfigError

__all__ = ["AgentIdTaken", "IdLock"]


class AgentIdTaken(ConfigError):
    """Another process already runs an agent with this id and home."""


class IdLock:
    """The lock of one agent id in one home (``acquire`` / ``release``)."""

    def __init__(self, home: Path, agent_id: str) -> None:
        self.path = home / f"agent-{agent_id}.lock"
        self._agent_id = agent_id
        self._fd = -1

    def acquire(self) -> None:
        """Raises:
        AgentIdTaken: another live process holds it (the message names its pid).
        ConfigError: the lock file cannot be created.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot create the agent lock {self.path}: {exc}; check DAGON_HOME") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AgentIdTaken(
                f"another agent with id {self._agent_id!r} is already running from {self.path.parent}"
                f" (pid {holder}); two agents with one id would knock each other off the broker — give this one"
                " its own id (--id NAME or DAGON_AGENT_ID) or its own home (DAGON_HOME)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock {self.path}: {exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # the file stays: removing it could race another process's open
        self._fd = -1
