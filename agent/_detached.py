"""Attempts whose work outlives the agent process (a Slurm job), re-attached by its next life.

A batch job keeps running when the agent that submitted it dies (SIGKILL, OOM, a
reboot of the login node's agent service). Before such an attempt starts, the agent
records its assignment and the coordinator to report to in ``<home>/detached/``; the
record goes once the attempt has ended and its result was handed to the outbox. The
next agent process with the same id and home reads the records before it starts
serving: an attempt whose runtime says its work is still there
(:meth:`~dagon.agent.runtimes.Runtime.resumable`, e.g. the job id is recorded) is run
again in *resume* mode — the runtime follows the job instead of starting it — and the
attempt is listed among those the agent holds from its first heartbeat on, so the
coordinator keeps the attempt (within its requeue grace) and takes its result as
usual. A record whose result is already in the spool, or whose work never started, is
dropped: the coordinator runs that attempt again if it needs to.

The records live in the agent's private home, never in a task's scratch directory (a
task could write there). They are the agent's own notes, so they are stored unsigned;
the assignment was verified when it arrived.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

from dagon.protocol import AssignTasks, Codec, ProtocolError, TaskAssignment, TaskRef

__all__ = ["DetachedRecords"]

log = logging.getLogger(__name__)


class DetachedRecords:
    """The record files of one agent (``<home>/detached/<digest>.msgpack``)."""

    def __init__(self, directory: Path, *, agent: str) -> None:
        self.directory = directory
        self._codec = Codec(sender=f"agent/{agent}")  # unsigned: the agent's own notes

    def _path(self, ref: TaskRef) -> Path:
        digest = hashlib.sha256(f"{ref.run}\0{ref.task}\0{ref.attempt}".encode()).hexdigest()[:32]
        return self.directory / f"{digest}.msgpack"

    def save(self, reply_to: str, assignment: TaskAssignment) -> None:
        """Record ``assignment`` (atomically) before its work starts."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        path = self._path(assignment.ref)
        part = path.with_suffix(".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self._codec.encode(AssignTasks(reply_to=reply_to, tasks=(assignment,))))
            f.flush()
            os.fsync(f.fileno())
        part.replace(path)

    def drop(self, ref: TaskRef) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(ref).unlink()

    def load(self) -> list[tuple[str, TaskAssignment]]:
        """Every readable record as (coordinator to report to, assignment); unreadable ones are removed."""
        found: list[tuple[str, TaskAssignment]] = []
        for path in sorted(self.directory.glob("*.msgpack")) if self.directory.is_dir() else []:
            try:
                message = self._codec.decode(path.read_bytes()).message
                if not isinstance(message, AssignTasks) or len(message.tasks) != 1:
                    raise ProtocolError("not a single assignment", reason="malformed")
            except (OSError, ProtocolError) as exc:
                log.warning("dropping the unreadable detached-attempt record %s: %s", path, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append((message.reply_to, message.tasks[0]))
        return found
