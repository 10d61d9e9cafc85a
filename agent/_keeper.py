"""Nothing a task started outlives its agent: the ledger, the keeper, the sweep.

Every agent *life* (one process) has a random token. Each task's processes carry it
in their environment (``DAGON_AGENT_LIFE``, inherited by everything they start) and
every process group the agent spawns is written to a ledger file
(``<home>/tasks-<agent id>.pids``: the group leader's pid and start time, appended
when it is spawned, struck out when it is reaped). Two things read the ledger:

* the **keeper**, a small process the agent starts at once (this file run as a
  script with ``python -I -S``: stdlib only, ~11 MB resident). It waits for its stdin — a
  pipe only the agent holds — to reach end-of-file, which the kernel guarantees when
  the agent process ends in any way, SIGKILL included. It then kills what the agent
  left: every group still in the ledger and every process carrying the life token
  (also one that left its process group with ``setsid``).
* the **next life** of the agent (same id, same home), which does the same
  :func:`sweep` before it announces itself — for when the keeper died too (a whole
  process group killed, the OOM killer).

``PR_SET_PDEATHSIG`` alone is not enough: it fires when the *thread* that forked
dies (the agent forks in worker threads), and it reaches only the direct child, not
the processes a task starts. A recycled pid is never killed: a group counts as ours
only if its leader is alive with the recorded start time or one of its members
carries the token, and every signal goes through a pidfd opened before the check.
A ledger from an earlier boot is void (its processes died with that boot).

What escapes: a process that both leaves the task's process group *and* clears its
environment (``env -i``, a container engine's daemon-side process). Container
runtimes are documented in docs/durability.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["LIFE_ENV", "Ledger", "read_ledger", "sweep", "take_over"]

LIFE_ENV = "DAGON_AGENT_LIFE"
_HEADER = "dagon-agent-life"
_ROUNDS = 20  # sweeps repeat while they find something (a process may fork while we kill)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _stat(pid: int) -> tuple[int, int] | None:
    """``(process group, start time in clock ticks since boot)`` of ``pid``, None if gone or a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # dead, only waiting to be reaped: nothing to kill
        return None
    return int(fields[2]), int(fields[19])


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot), None if it is gone."""
    stat = _stat(pid)
    return stat[1] if stat is not None else None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _carries(pid: int, marker: bytes) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return environ.startswith(marker) or b"\0" + marker in environ


def _kill(pid: int, seen: tuple[int, int]) -> bool:
    """SIGKILL ``pid`` through a pidfd if it still is the process ``seen`` (same group and start
    time) once the pidfd is open: the pidfd pins it, so a recycled pid is never signalled."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if _stat(pid) != seen:
            return False
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    finally:
        os.close(fd)


def sweep(token: str, groups: dict[int, int], *, spare: frozenset[int] = frozenset()) -> int:
    """Kill what an agent life left: members of ``groups`` (pgid → leader start time) that are
    verifiably ours, and every process whose environment carries ``token``; returns how many."""
    marker = f"{LIFE_ENV}={token}\0".encode() if token else b""
    own = {os.getpid(), *spare}
    killed: set[int] = set()
    for _ in range(_ROUNDS):
        found = 0
        stats = {pid: s for pid in _pids() if pid not in own and (s := _stat(pid)) is not None}
        ours: set[int] = set()
        for pgid, started in groups.items():
            members = [pid for pid, (group, _) in stats.items() if group == pgid]
            leader = stats.get(pgid)
            if (leader is not None and leader[1] == started) or (marker and any(_carries(m, marker) for m in members)):
                ours.update(members)
        for pid in stats:
            if pid not in ours and not (marker and _carries(pid, marker)):
                continue
            # The same pid with the same start time is the same process (checked once pinned).
            ok = _kill(pid, stats[pid])
            if ok and pid not in killed:
                killed.add(pid)
                found += 1
        if not found:
            break
    return len(killed)


def read_ledger(path: Path) -> tuple[str, str, dict[int, int]]:
    """``(token, boot id, live groups)`` of a ledger file; empty when there is none."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return "", "", {}
    if not lines or not lines[0].startswith(_HEADER + " "):
        return "", "", {}
    head = lines[0].split()
    token, boot = (head[1], head[2]) if len(head) >= 3 else ("", "")
    groups: dict[int, int] = {}
    for line in lines[1:]:
        parts = line.split()
        with contextlib.suppress(ValueError, IndexError):
            if parts[0] == "+":
                groups[int(parts[1])] = int(parts[2])
            elif parts[0] == "-":
                groups.pop(int(parts[1]), None)
    return token, boot, groups


class Ledger:
    """This life's record of spawned process groups (appends are single ``write`` calls:
    safe from the worker threads that spawn; the file is rewritten empty whenever no
    group is live, so it stays small)."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self.token = token
        self._live: set[int] = set()
        self._lock = threading.Lock()
        self._fd = -1

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._header()

    def _header(self) -> None:
        os.write(self._fd, f"{_HEADER} {self.token} {boot_id()}\n".encode())

    def spawned(self, pid: int, what: str = "") -> None:
        """Record a new group leader (call right after the fork)."""
        started = start_time(pid)
        with self._lock:
            self._live.add(pid)
            if self._fd >= 0:
                label = " ".join(what.split())  # one line, whatever the task name holds
                os.write(self._fd, f"+ {pid} {started if started is not None else -1} {label}\n".encode())

    def reaped(self, pid: int) -> None:
        """The group of ``pid`` is dead (its leader reaped, the group killed)."""
        with self._lock:
            self._live.discard(pid)
            if self._fd < 0:
                return
            if self._live:
                os.write(self._fd, f"- {pid}\n".encode())
            else:
                os.ftruncate(self._fd, 0)
                self._header()

    def close(self, *, remove: bool) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()


def take_over(path: Path) -> tuple[int, list[str]]:
    """Kill what a previous life recorded in ``path`` left running; returns ``(killed, tasks)``."""
    token, boot, groups = read_ledger(path)
    if not token or boot != boot_id():
        return 0, []
    tasks = sorted({line.split(maxsplit=3)[3] for line in _plus_lines(path) if len(line.split(maxsplit=3)) == 4})
    return sweep(token, groups), tasks


def _plus_lines(path: Path) -> list[str]:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return [line for line in path.read_text().splitlines() if line.startswith("+ ")]
    return []


def _keeper(ledger: Path, agent: int) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the agent's end (EOF on stdin) ends the keeper
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    token, _, groups = read_ledger(ledger)
    killed = sweep(token, groups, spare=frozenset({agent}))
    if killed:
        sys.stderr.write(f"dagon-agent keeper: agent pid {agent} ended; killed {killed} process(es) of its tasks\n")
    return 0


if __name__ == "__main__":
    sys.exit(_keeper(Path(sys.argv[1]), int(sys.argv[2])))
