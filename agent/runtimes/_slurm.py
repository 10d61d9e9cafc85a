"""The Slurm runtime: each attempt is one ``sbatch`` job, followed by the agent's one poller.

An agent on a login node (``dagon-agent --runtimes slurm``) writes the task's command
into ``.dagon/job.sh`` (mode 0700: it may hold resolved secrets) and submits it with
``sbatch --parsable``; the job's working directory is the task's scratch directory,
which must be on a file system the compute nodes share. stdout and stderr go to
``.dagon/stdout`` and ``.dagon/stderr``. The job id is recorded in ``.dagon/slurm-job``
before anything else happens, so an agent that restarts finds its job again and
follows it instead of submitting a second one (:meth:`SlurmRuntime.run` attaches when
the file names a job Slurm still knows). When the coordinator, having lost the agent,
runs the task again as a new attempt, the job of the earlier attempt is adopted if it
runs the same script and has not failed: it is followed to its end and its outputs are
linked into the new attempt's directory, so a restart never submits the same work twice.

Task options (``runtime_options``; DAGonStar's ``TaskType.SLURM`` names are the same):
``partition``, ``ntasks``, ``nodes`` (``2`` or ``"2-4"``), ``ntasks_per_node``,
``cpus_per_task`` (default: the task's ``cpus`` rounded up), ``memory`` (megabytes as
in DAGonStar, or Slurm's ``"4G"``; default: the task's ``memory``), ``time`` (minutes,
or Slurm's ``"HH:MM:SS"``; default: the task's ``timeout`` rounded up plus a minute),
``account``, ``qos``, ``gres``, ``constraint``, ``comment``, ``job_name`` and
``extra`` — a list of further ``#SBATCH`` lines (``"--exclusive"``).

The task's ``timeout`` counts from submission: past it the job is cancelled
(``scancel``) and the attempt ends ``TIMEOUT``; a cancelled attempt cancels its job too,
and waits until Slurm has taken it off the queue. Jobs that end FAILED, TIMEOUT,
OUT_OF_MEMORY, NODE_FAIL, PREEMPTED (…) fail with that cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

from dagon.agent._keeper import LIFE_ENV
from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._jobs import OptionError, Options, read_tail, run_cleanup
from dagon.agent.runtimes._slurm_poll import ACTIVE_STATES, JobEnd, JobTracker, SlurmCommandError, slurm_command
from dagon.protocol import ConfigError, ResultStatus

__all__ = ["OPTIONS", "SlurmRuntime", "sbatch_argv", "slurm_arguments"]

log = logging.getLogger(__name__)

OPTIONS: Final = frozenset(
    {"partition", "ntasks", "nodes", "ntasks_per_node", "cpus_per_task", "memory", "time", "account", "qos",
     "gres", "constraint", "comment", "job_name", "extra"}
)  # fmt: skip
JOB_FILE: Final = "slurm-job"
SECRET_PREFIX: Final = "DAGON_SECRET_"
CANCEL_WAIT: Final = 60.0
_CAUSES: Final = {
    "OUT_OF_MEMORY": "ran out of memory",
    "NODE_FAIL": "lost its node (NODE_FAIL)",
    "BOOT_FAIL": "could not boot its node (BOOT_FAIL)",
    "PREEMPTED": "was preempted",
    "DEADLINE": "missed its deadline",
    "REVOKED": "was revoked (federation)",
    "CANCELLED": "was cancelled outside dagon (scancel)",
}


def _check_line(key: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise OptionError(f"slurm option {key!r} must be one line, got {value!r}")
    return value


def _memory(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return f"{value}M"  # DAGonStar passed megabytes (Slurm's default unit)
    if isinstance(value, str) and value.strip() and value.strip()[:-1].isdigit() and value.strip()[-1] in "KMGTkmgt":
        return value.strip().upper()
    raise OptionError(f"slurm option 'memory' must be megabytes (e.g. 4096) or Slurm's '4G', got {value!r}")


def _time(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)  # minutes
    if isinstance(value, str) and value.strip() and all(c.isdigit() or c in ":-" for c in value.strip()):
        return value.strip()
    raise OptionError(f"slurm option 'time' must be minutes (e.g. 30) or Slurm's 'HH:MM:SS', got {value!r}")


def sbatch_argv(sbatch: str, execution: Execution) -> tuple[list[str], list[str]]:
    """The ``sbatch`` command line and the extra ``#SBATCH`` lines for one attempt.

    Raises:
        OptionError: an unknown option or a value Slurm would not take.
    """
    a = execution.assignment
    meta = execution.stdout.parent
    args, lines = slurm_arguments(a.runtime_options, task=a.task, cpus=a.cpus, memory=a.memory, timeout=a.timeout)
    argv = [sbatch, "--parsable", *args, f"--chdir={execution.workdir}", f"--output={meta / 'stdout'}",
            f"--error={meta / 'stderr'}", "--export=ALL"]  # fmt: skip
    return argv, lines


def slurm_arguments(
    raw: Mapping[str, Any], *, task: str, cpus: float = 1.0, memory: int = 0, timeout: float | None = None
) -> tuple[list[str], list[str]]:
    """sbatch options (no paths) and extra ``#SBATCH`` lines for a task's Slurm options.

    Raises:
        OptionError: an unknown option or a value Slurm would not take.
    """
    opts = Options("slurm", raw, OPTIONS)
    name = opts.text("job_name") or f"dagon-{task}"
    argv = [f"--job-name={_check_line('job_name', name)}"]
    for key in ("partition", "account", "qos", "gres", "constraint", "comment"):
        if (value := opts.text(key)) is not None:
            argv.append(f"--{key}={_check_line(key, value)}")
    for key in ("ntasks", "ntasks_per_node", "cpus_per_task"):
        if (number := opts.integer(key, minimum=1)) is not None:
            argv.append(f"--{key.replace('_', '-')}={number}")
    nodes = raw.get("nodes")
    if nodes is not None:
        if isinstance(nodes, bool) or not isinstance(nodes, int | str) or not str(nodes).replace("-", "").isdigit():
            raise OptionError(f"slurm option 'nodes' must be a count (2) or a range ('2-4'), got {nodes!r}")
        argv.append(f"--nodes={nodes}")
    if "cpus_per_task" not in raw and cpus > 1:
        argv.append(f"--cpus-per-task={math.ceil(cpus)}")
    if "memory" in raw:
        argv.append(f"--mem={_memory(raw['memory'])}")
    elif memory > 0:
        argv.append(f"--mem={max(1, math.ceil(memory / 2**20))}M")
    if "time" in raw:
        argv.append(f"--time={_time(raw['time'])}")
    elif timeout is not None:
        argv.append(f"--time={math.ceil(timeout / 60) + 1}")  # dagon's own limit comes first
    extra = raw.get("extra", [])
    if not isinstance(extra, list | tuple) or not all(isinstance(x, str) and x.strip() for x in extra):
        raise OptionError(f"slurm option 'extra' must be a list of sbatch options ('--exclusive'), got {extra!r}")
    lines = []
    for line in extra:
        text = _check_line("extra", line.strip()).removeprefix("#SBATCH").strip()
        if not text.startswith("-"):
            raise OptionError(f"slurm option 'extra' holds {line!r}: each entry is an sbatch option like '--exclusive'")
        lines.append(f"#SBATCH {text}")
    return argv, lines


def _record(meta: Path, job: str) -> None:
    path = meta / JOB_FILE
    part = path.with_suffix(".part")
    part.write_text(json.dumps({"job": job, "submitted": time.time()}))
    part.replace(path)


def _recorded(meta: Path) -> tuple[str, float] | None:
    try:
        doc = json.loads((meta / JOB_FILE).read_text())
        return str(doc["job"]), float(doc["submitted"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _script_text(lines: list[str], command: str) -> str:
    return "#!/bin/bash\n" + "".join(f"{line}\n" for line in lines) + command + "\n"


def _write_script(meta: Path, lines: list[str], command: str) -> Path:
    script = meta / "job.sh"
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "w") as f:
        f.write(_script_text(lines, command))
    return script


def _earlier_jobs(workdir: Path, attempt: int, script: str) -> list[tuple[str, float, Path]]:
    """Jobs of earlier attempts of this task whose script is this attempt's (newest first).

    An agent that restarts loses its attempts; the coordinator runs the task again as a
    new attempt in a new directory. Its job from before may still be queued or running
    (or have finished meanwhile): such a job is the same work, so it is adopted rather
    than submitted twice.
    """
    prefix, _, _ = workdir.name.rpartition("-")
    found = []
    for sibling in workdir.parent.glob(f"{prefix}-*"):
        number = sibling.name[len(prefix) + 1 :]
        if not number.isdigit() or int(number) >= attempt:
            continue
        recorded = _recorded(sibling / ".dagon")
        try:
            old = (sibling / ".dagon" / "job.sh").read_text()
        except OSError:
            continue
        if recorded is not None and old.replace(str(sibling), str(workdir)) == script:
            found.append((recorded[0], recorded[1], sibling, int(number)))
    return [(job, at, path) for job, at, path, _ in sorted(found, key=lambda f: -f[3])]


def _take_over(old: Path, new: Path) -> None:
    """Bring an adopted job's outputs (hard links where possible) and its stdout/stderr into ``new``."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in old.iterdir():
        if entry.name == ".dagon":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=link, dirs_exist_ok=True)
        elif not (new / entry.name).exists():
            link(str(entry), str(new / entry.name)) if entry.is_file() else shutil.copy2(entry, new / entry.name)
    for name in ("stdout", "stderr"):
        with contextlib.suppress(OSError):
            shutil.copy2(old / ".dagon" / name, new / ".dagon" / name)


class SlurmRuntime(Runtime):
    """Runs each attempt as a Slurm batch job.

    Args:
        env: environment of the Slurm commands and jobs (default: the agent's own, with
            ``SLURM_CONF`` if set); the task's variables are added per job.
        min_interval, max_interval: bounds of the queue polling interval in seconds.

    Raises:
        ConfigError: ``sbatch``, ``squeue``, ``scancel`` or ``scontrol`` is not on ``PATH``.
    """

    name: ClassVar[str] = "slurm"
    detached: ClassVar[bool] = True  # a job runs on when the agent dies; its next life follows it

    def __init__(
        self, *, env: Mapping[str, str] | None = None, min_interval: float = 0.5, max_interval: float = 15.0
    ) -> None:
        self._env = dict(os.environ if env is None else env)
        path = self._env.get("PATH", os.defpath)
        bins: dict[str, str] = {}
        for tool in ("sbatch", "squeue", "scancel", "scontrol", "sacct"):
            found = shutil.which(tool, path=path)
            if found is None and tool != "sacct":
                raise ConfigError(
                    f"the slurm runtime needs {tool} on PATH: install the Slurm client commands (Debian:"
                    " slurm-client) or run the agent on a login node, or drop 'slurm' from --runtimes"
                )
            if found is not None:
                bins[tool] = found
        self._bins = bins
        self._tracker = JobTracker(env=self._env, bins=bins, min_interval=min_interval, max_interval=max_interval)

    @property
    def tracker(self) -> JobTracker:
        return self._tracker

    async def run(self, execution: Execution) -> Outcome:
        a = execution.assignment
        meta = execution.stdout.parent
        try:
            argv, lines = sbatch_argv(self._bins["sbatch"], execution)
        except OptionError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        attached = await self._attach(meta)
        adopted: Path | None = None
        try:
            if attached is None:
                attached, adopted = await self._adopt(execution, _script_text(lines, execution.command))
            if attached is not None:
                job, submitted = attached
                log.info("slurm: %s/%s attempt %d re-attached to job %s", a.run, a.task, a.attempt, job)
            else:
                job = await self._submit(argv, lines, execution)
                submitted = time.time()
        except SlurmCommandError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        outcome = await self._follow(job, submitted, execution)
        if adopted is not None:
            await asyncio.to_thread(_take_over, adopted, execution.workdir)
            outcome = dataclasses.replace(outcome, stderr_tail=await asyncio.to_thread(read_tail, execution.stderr))
        return outcome

    def resumable(self, execution: Execution) -> bool:
        return _recorded(execution.stdout.parent) is not None

    async def resume(self, execution: Execution) -> Outcome:
        """Follow the job an earlier agent process submitted for this very attempt (never submit)."""
        meta = execution.stdout.parent
        recorded = await asyncio.to_thread(_recorded, meta)
        attached = await self._attach(meta)
        if attached is None:
            job = recorded[0] if recorded is not None else "?"
            return Outcome(ResultStatus.ERROR, None, error=f"slurm job {job} of this attempt, submitted before the"
                           " agent restarted, is unknown to Slurm (no accounting, it left slurmctld's memory and"
                           " no job completion log names it)")  # fmt: skip
        job, submitted = attached
        a = execution.assignment
        log.info("slurm: %s/%s attempt %d: the restarted agent follows job %s again", a.run, a.task, a.attempt, job)
        return await self._follow(job, submitted, execution)

    async def _adopt(self, execution: Execution, script: str) -> tuple[tuple[str, float] | None, Path | None]:
        """An earlier attempt's job doing the same work that has not failed (see :func:`_earlier_jobs`)."""
        earlier = await asyncio.to_thread(_earlier_jobs, execution.workdir, execution.assignment.attempt, script)
        for job, submitted, old in earlier:
            rc, out, _ = await slurm_command(
                [self._bins["squeue"], "--noheader", "--states=all", f"--jobs={job}", "--format=%T"], env=self._env
            )
            state = out.strip() if rc == 0 else ""
            if state in ACTIVE_STATES or (not state and await self._completed(job)) or state == "COMPLETED":
                meta = execution.stdout.parent
                await asyncio.to_thread(_write_script, meta, [], f"# adopted slurm job {job} of {old}")
                await asyncio.to_thread(_record, meta, job)
                log.info("slurm: adopting job %s of an earlier attempt (%s)", job, old.name)
                return (job, submitted), old
        return None, None

    async def _completed(self, job: str) -> bool:
        end = await self._tracker.end_of(job)
        return end is not None and end.state == "COMPLETED"

    async def _attach(self, meta: Path) -> tuple[str, float] | None:
        """The job a previous agent process submitted for this attempt, if Slurm still knows it."""
        recorded = await asyncio.to_thread(_recorded, meta)
        if recorded is None:
            return None
        with contextlib.suppress(SlurmCommandError):
            rc, out, _ = await slurm_command(
                [self._bins["squeue"], "--noheader", "--states=all", f"--jobs={recorded[0]}", "--format=%T"],
                env=self._env,
            )
            if rc == 0 and out.strip():
                return recorded
            if await self._tracker.end_of(recorded[0]) is not None:
                return recorded
        return None

    async def _submit(self, argv: list[str], lines: list[str], execution: Execution) -> str:
        meta = execution.stdout.parent
        script = await asyncio.to_thread(_write_script, meta, lines, execution.command)
        # The job inherits this environment (--export=ALL) and Slurm stores it: never the agent's secrets.
        # Nor the agent life's token: the keeper kills what carries it when the agent dies, and a
        # job must outlive its agent (the next life follows it).
        env = {k: v for k, v in self._env.items() if not k.startswith(SECRET_PREFIX)} | dict(execution.env)
        env.pop(LIFE_ENV, None)
        # Cancelled while sbatch runs: the job may exist without us knowing its id; let
        # sbatch finish (it is quick) so the id is recorded and the job cancelled below.
        rc, out, err = await run_cleanup(lambda: slurm_command([*argv, str(script)], env=env))
        if rc != 0:
            first = next((line for line in err.splitlines() if line.strip()), f"exit status {rc}")
            raise SlurmCommandError(f"sbatch refused the job: {first.strip()}")
        job = out.strip().split(";")[0]
        if not job.isdigit() and not job.replace("_", "").isdigit():
            raise SlurmCommandError(f"sbatch answered {out.strip()!r} instead of a job id")
        await asyncio.to_thread(_record, meta, job)
        log.info("slurm: %s/%s attempt %d is job %s", execution.assignment.run, execution.assignment.task,
                 execution.assignment.attempt, job)  # fmt: skip
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            await run_cleanup(lambda: self._cancel(job))
            raise asyncio.CancelledError
        return job

    async def _follow(self, job: str, submitted: float, execution: Execution) -> Outcome:
        timeout = execution.assignment.timeout
        left = None if timeout is None else max(0.0, submitted + timeout - time.time())
        try:
            async with asyncio.timeout(left):
                last = await self._tracker.wait_ended(job)
        except TimeoutError:
            await run_cleanup(lambda: self._cancel(job))
            return Outcome(
                ResultStatus.TIMEOUT, None, error=f"slurm job {job} cancelled after the {timeout:g} s timeout",
                stderr_tail=await asyncio.to_thread(read_tail, execution.stderr),
            )  # fmt: skip
        except asyncio.CancelledError:
            await run_cleanup(lambda: self._cancel(job))
            raise
        end = await self._ended(job, last)
        tail = await asyncio.to_thread(read_tail, execution.stderr)
        return _outcome(job, end, tail)

    async def _ended(self, job: str, last: str) -> JobEnd | None:
        try:
            end = await self._tracker.end_of(job)
        except SlurmCommandError as exc:
            log.warning("slurm: cannot learn how job %s ended: %s", job, exc)
            end = None
        if end is None and last:
            return JobEnd(last, "", None)
        if end is not None:
            log.info("slurm: job %s ended %s, exit code %s (from %s)", job, end.state, end.exit_code, end.source)
        return end

    async def _cancel(self, job: str) -> None:
        """``scancel`` the job and wait (bounded) until it has left the active states."""
        try:
            rc, _, err = await slurm_command([self._bins["scancel"], job], env=self._env)
            if rc != 0 and "already completing or completed" not in err and "Invalid job id" not in err:
                log.warning("slurm: scancel %s failed: %s", job, err.strip())
            async with asyncio.timeout(CANCEL_WAIT):
                await self._tracker.wait_ended(job)
        except (SlurmCommandError, TimeoutError) as exc:
            log.warning("slurm: job %s may still be in the queue after scancel: %s", job, exc)

    async def aclose(self) -> None:
        await self._tracker.aclose()


def _outcome(job: str, end: JobEnd | None, tail: str) -> Outcome:
    if end is None:
        return Outcome(
            ResultStatus.ERROR, None, stderr_tail=tail,
            error=f"slurm job {job} ended but Slurm no longer knows how (no accounting, the job left"
            " slurmctld's memory and no job completion log names it)",
        )  # fmt: skip
    state = end.state.split("+")[0]
    if state == "COMPLETED" and end.exit_code in (0, None):
        return Outcome(ResultStatus.SUCCEEDED, 0, cpu_time=end.cpu_time, stderr_tail=tail)
    if state == "TIMEOUT":
        return Outcome(ResultStatus.TIMEOUT, end.exit_code, cpu_time=end.cpu_time, stderr_tail=tail,
                       error=f"slurm job {job} reached its Slurm time limit (TIMEOUT)")  # fmt: skip
    if state in ACTIVE_STATES:  # pragma: no cover - the poller returns only ended jobs
        return Outcome(ResultStatus.ERROR, None, error=f"slurm job {job} is still {state}", stderr_tail=tail)
    cause = _CAUSES.get(state, f"ended {state or 'in an unknown state'}")
    code = f" with exit code {end.exit_code}" if end.exit_code is not None else ""
    reason = f" ({end.reason})" if end.reason and end.reason not in ("None", "NonZeroExitCode") else ""
    return Outcome(ResultStatus.FAILED, end.exit_code, cpu_time=end.cpu_time, stderr_tail=tail,
                   error=f"slurm job {job} {cause}{code}{reason}")  # fmt: skip
