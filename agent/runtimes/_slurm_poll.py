"""Following Slurm jobs without hammering the controller: one poller for all jobs of an agent.

However many attempts an agent has in Slurm, one loop asks about all of them at once
(``squeue --jobs=A,B,… --states=all``) and wakes the attempts whose job changed. The
interval starts at ``min_interval`` after a submission and doubles (jittered) up to
``max_interval`` while nothing changes, so an agent with hundreds of queued jobs sends
one cheap request every few seconds, not hundreds.

When a job has ended, how it ended comes from ``sacct`` where accounting runs (exit
code, state, CPU time), else from ``scontrol show job`` (while slurmctld still holds the
job, ``MinJobAge`` seconds), else from the job completion log (``JobCompType=jobcomp/filetxt``)
— whichever answers first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dagon.agent.runtimes._jobs import run_cleanup

__all__ = ["ACTIVE_STATES", "JobEnd", "JobTracker", "SlurmCommandError", "parse_exit", "slurm_command"]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT: Final = 60.0
# Job states in which the job may still run (squeue's long names).
ACTIVE_STATES: Final = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
     "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)  # fmt: skip
_FIELD = re.compile(r"(\w+)=(\S*)")


class SlurmCommandError(Exception):
    """A Slurm command failed or could not be started; the message is one line."""


async def slurm_command(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: bytes | None = None,
    limit: float = COMMAND_TIMEOUT,
) -> tuple[int, str, str]:  # fmt: skip
    """Run one Slurm client command; returns (exit status, stdout, stderr).

    Raises:
        SlurmCommandError: the command is not installed or did not answer within ``limit`` seconds.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        raise SlurmCommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise SlurmCommandError(f"{argv[0]} did not answer within {limit:g} s (is slurmctld up?)") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await run_cleanup(proc.wait)
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def parse_exit(value: str) -> tuple[int | None, int]:
    """Slurm's ``EXIT:SIGNAL`` pair as (exit code in the shell's convention, signal)."""
    code, _, sig = value.partition(":")
    try:
        exit_code, signal = int(code), int(sig or 0)
    except ValueError:
        return None, 0
    return (128 + signal if signal else exit_code), signal


@dataclass(frozen=True, slots=True)
class JobEnd:
    """How a job ended: Slurm's state, the reason, the exit code, CPU seconds (0 when unknown) and
    the source that said so (``sacct``, ``scontrol`` or ``jobcomp``; '' when only the queue's last
    state is known)."""

    state: str
    reason: str
    exit_code: int | None
    cpu_time: float = 0.0
    source: str = ""


def _cpu_seconds(text: str) -> float:
    """sacct's ``TotalCPU`` (``[D-][HH:]MM:SS[.mmm]``) in seconds."""
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":") if p]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds + (int(days) * 86400 if days else 0)


class JobTracker:
    """The one poller of an agent's Slurm jobs.

    Args:
        env: environment of the Slurm commands (``SLURM_CONF`` …).
        bins: paths of ``squeue``, ``scontrol``, ``sacct``.
        min_interval, max_interval: bounds of the polling interval in seconds.
    """

    def __init__(
        self, *, env: Mapping[str, str], bins: Mapping[str, str], min_interval: float = 0.5, max_interval: float = 15.0
    ) -> None:
        if not 0 < min_interval <= max_interval:
            raise ValueError(f"polling intervals must satisfy 0 < min <= max, got {min_interval}, {max_interval}")
        self._env = env
        self._bins = bins
        self._min = min_interval
        self._max = max_interval
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._last: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._accounting: bool | None = None
        self._jobcomp: Path | None = None
        self.polls = 0  # squeue calls made (observable in tests and benchmarks)

    # -- following ----------------------------------------------------------------------

    async def wait_ended(self, job: str) -> str:
        """Wait until ``job`` leaves the active states; returns its last state ('' when Slurm forgot it)."""
        fut = self._waiters.get(job)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiters[job] = fut
        self._wake.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._poll_loop(), name="slurm-poller")
        try:
            return await asyncio.shield(fut)
        finally:
            if self._waiters.get(job) is fut:
                del self._waiters[job]
                self._last.pop(job, None)

    def state(self, job: str) -> str:
        """The last state seen for ``job`` ('' before the first poll)."""
        return self._last.get(job, "")

    async def _poll_loop(self) -> None:
        quiet = 0
        while self._waiters:
            self._wake.clear()
            try:
                changed = await self._poll_once()
            except SlurmCommandError as exc:
                log.warning("slurm: polling the queue failed (%s); trying again", exc)
                changed = False
            except Exception:  # the loop must outlive a surprise, or every waiter hangs
                log.exception("slurm: polling the queue failed unexpectedly; trying again")
                changed = False
            quiet = 0 if changed else quiet + 1
            delay = min(self._max, self._min * 2.0 ** min(quiet, 12)) * random.uniform(0.8, 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()  # a new job resets the pace
                quiet = 0

    async def _poll_once(self) -> bool:
        jobs = sorted(j for j, f in self._waiters.items() if not f.done())
        if not jobs:
            return False
        self.polls += 1
        rc, out, err = await slurm_command(
            [self._bins["squeue"], "--noheader", "--states=all", f"--jobs={','.join(jobs)}", "--format=%i|%T"],
            env=self._env,
        )
        states: dict[str, str] = {}
        if rc == 0:
            for line in out.splitlines():
                job, _, state = line.strip().partition("|")
                states[job] = state.strip()
        elif "Invalid job id" not in err:
            raise SlurmCommandError(f"squeue failed: {err.strip() or f'exit status {rc}'}")
        changed = False
        for job in jobs:
            state = states.get(job, "")
            if state != self._last.get(job):
                changed = True
                self._last[job] = state
            if state not in ACTIVE_STATES:  # ended, or gone from slurmctld's memory ('')
                fut = self._waiters.get(job)
                if fut is not None and not fut.done():
                    fut.set_result(state)
        return changed

    async def aclose(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    # -- how it ended -------------------------------------------------------------------

    async def _config(self) -> None:
        if self._accounting is not None:
            return
        rc, out, _ = await slurm_command([self._bins["scontrol"], "show", "config"], env=self._env)
        values = {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.splitlines()) if k.strip()}
        self._accounting = rc == 0 and values.get("AccountingStorageType", "accounting_storage/none") not in (
            "accounting_storage/none", ""
        ) and "sacct" in self._bins  # fmt: skip
        if values.get("JobCompType") == "jobcomp/filetxt" and values.get("JobCompLoc", "").startswith("/"):
            self._jobcomp = Path(values["JobCompLoc"])

    async def end_of(self, job: str) -> JobEnd | None:
        """How ``job`` ended, or None when no source still knows it."""
        await self._config()
        if self._accounting:
            found = await self._from_sacct(job)
            if found is not None:
                return found
        found = await self._from_scontrol(job)
        if found is not None:
            return found
        if self._jobcomp is not None:
            return await asyncio.to_thread(_from_jobcomp, self._jobcomp, job)
        return None

    async def _from_sacct(self, job: str) -> JobEnd | None:
        rc, out, _ = await slurm_command(
            [self._bins["sacct"], "--noheader", "--parsable2", "--allocations", f"--jobs={job}",
             "--format=JobIDRaw,State,ExitCode,TotalCPU,Reason"],
            env=self._env,
        )  # fmt: skip
        if rc != 0:
            return None
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) >= 4 and parts[0] == job:
                code, _ = parse_exit(parts[2])
                state = parts[1].split()[0] if parts[1] else ""  # "CANCELLED by 0"
                if state in ACTIVE_STATES:  # slurmdbd has not heard of the end yet: ask slurmctld
                    return None
                with contextlib.suppress(ValueError):
                    return JobEnd(state, parts[4] if len(parts) > 4 else "", code, _cpu_seconds(parts[3]), "sacct")
                return JobEnd(state, "", code, source="sacct")
        return None

    async def _from_scontrol(self, job: str) -> JobEnd | None:
        rc, out, _ = await slurm_command([self._bins["scontrol"], "show", "job", "--oneliner", job], env=self._env)
        if rc != 0:
            return None
        fields = dict(_FIELD.findall(out))
        if "JobState" not in fields:
            return None
        code, _ = parse_exit(fields.get("ExitCode", ""))
        return JobEnd(fields["JobState"], fields.get("Reason", ""), code, source="scontrol")


def _from_jobcomp(path: Path, job: str) -> JobEnd | None:
    """The last line about ``job`` in a ``jobcomp/filetxt`` log (read from the end)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - (4 << 20)))  # the recent end of the log is enough
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(f"JobId={job} "):
            fields = dict(_FIELD.findall(line))
            code, _ = parse_exit(fields.get("ExitCode", ""))
            return JobEnd(fields.get("JobState", ""), "", code, source="jobcomp")
    return None
