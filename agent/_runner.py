"""Running one assignment: scratch directory, staging, runtime, manifest → ``TaskResult``.

Every way an attempt can end — success, failure, timeout, cancellation, a
refused input, a bug in the agent — ends in exactly one result handed to
``on_finish``; nothing raised here reaches the agent's task group except the
cancellation itself (re-raised after the result was recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from dagon.agent._config import AgentConfig, data_client_tls
from dagon.agent._layout import make_task_dir, task_dir
from dagon.agent._lifeline import LIFE_ENV, Lifeline
from dagon.agent._secrets import SecretError, Secrets
from dagon.agent._sftp import SshAccess, sftp_pull
from dagon.agent._staging import (
    StagingError,
    check_input_path,
    has_outputs,
    input_root,
    manifest,
    rewrite_command,
    rewrite_meta,
    rewrite_value,
    stage_inputs,
    task_dir_name,
    write_manifest,
)
from dagon.agent.runtimes import Execution, Outcome, PythonRuntime, RunAs, Runtime, run_process
from dagon.protocol import (
    DagonError,
    OutputFile,
    ResultStatus,
    Signer,
    StageInput,
    StartedTask,
    TaskAssignment,
    TaskResult,
    TransportError,
    bind_grant,
)
from dagon.protocol.transport import PullStats

__all__ = ["TaskRunner"]

log = logging.getLogger(__name__)

OnStart = Callable[[StartedTask], None]
OnFinish = Callable[[TaskResult], None]
OnProgress = Callable[[str], Awaitable[None]]
PROGRESS_EVERY = 2.0  # seconds between progress reports of a long staging step
RELAY_WAIT = 300.0  # seconds a consumer waits for an unreachable producer's upload to the relay


def _loopback_hint(item: StageInput) -> str:
    """Agents on other hosts cannot reach a data server bound to loopback: say what to change."""
    host = urllib.parse.urlsplit(item.url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        where = "the coordinator's relay" if item.relay else f"agent {item.source_agent!r}'s data server"
        flag = "--relay-host/--relay-url" if item.relay else "--data-host/--data-url"
        return f" — {where} listens on loopback only; give it an address other hosts reach ({flag})"
    return ""


def _manifest(workdir: Path, patterns: tuple[str, ...]) -> tuple[OutputFile, ...]:
    outputs = manifest(workdir, patterns)
    write_manifest(workdir, outputs)
    return outputs


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


EMPTY_RUNTIMES: Mapping[str, Runtime] = MappingProxyType({})
# Runtimes that bind a staged symlink's target read-only into the container (runtimes/_mounts.py):
# only for them does stage_mode "symlink" stage a link; every other task gets its own copy.
READ_ONLY_LINKS: Final = frozenset({"docker", "charliecloud", "apptainer"})

# What a process task inherits from the agent's environment: where programs are, the locale
# and time zone, the terminal type. Nothing else — no broker password, cloud credential or
# DAGON_* setting of the agent; a task gets its own ``env`` and the secrets it references.
INHERITED: Final = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR"})


def base_environment() -> dict[str, str]:
    """The part of the agent's environment a process task starts with (see :data:`INHERITED`)."""
    env = {k: v for k, v in os.environ.items() if k in INHERITED or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    return env


class TaskRunner:
    """Runs assignments with the agent's runtimes.

    Args:
        config: the agent's settings (scratch root, staging mode).
        host_id: this machine's id (inputs produced here are linked or copied).
        python: the python runtime's worker pool.
        runtimes: further runtimes by name (containers, jobs, …).
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        host_id: str,
        python: PythonRuntime,
        runtimes: Mapping[str, Runtime] = EMPTY_RUNTIMES,
        secrets: Secrets | None = None,
        lifeline: Lifeline | None = None,
        signer: Signer | None = None,
    ) -> None:
        self._config = config
        # Read once: filtering os.environ per task cost ~70 µs of every shell task (profiled).
        self._base_env = MappingProxyType(base_environment())
        self._lifeline = lifeline
        self._signer = signer  # proves to data servers that this agent holds the grants it presents
        if config.stage_mode == "hardlink":
            log.warning(
                "stage_mode = 'hardlink' is deprecated and stages copies: a hard link let a consumer change its"
                " producer's output (inputs are reflinked where the file system can, else copied); set 'copy'"
            )
        self._host_id = host_id
        self._python = python
        self._runtimes = runtimes
        self._secrets = secrets or Secrets()
        self._run_as = RunAs.lookup(config.run_as) if config.run_as else None
        self._transfers = asyncio.Semaphore(config.max_transfers)
        self._tls = data_client_tls(config)
        self.tls = self._tls  # how peers' (and the relay's) HTTPS certificates are verified
        self._ssh = (
            SshAccess(config.ssh_key, config.ssh_known_hosts or Path.home() / ".ssh" / "known_hosts")
            if config.ssh_key is not None
            else None
        )

    def bind(self, token: str) -> str:
        """``token`` with this agent's proof of holding it (data grants are bound to their consumer)."""
        return bind_grant(token, self._signer) if self._signer is not None and token else token

    async def close_runtimes(self) -> None:
        """Close the python pool and every runtime (a failing one is logged, the others still closed)."""
        self._python.close()
        for runtime in self._runtimes.values():
            try:
                await runtime.aclose()
            except Exception:
                log.exception("agent %s: closing runtime %r failed", self._config.agent_id, runtime.name)

    async def workdir(self, a: TaskAssignment, now: float) -> Path | None:
        """``<scratch>/<run>/<task>-<attempt>``, or DAGonStar's ``<scratch>/<epoch ms>-<task>`` (the
        ``scratch_layout``, see :mod:`dagon.agent._layout`); ``None`` for python tasks without inputs.

        Raises:
            StagingError: the run or task name cannot be used as a directory name.
        """
        if a.runtime == "python" and not a.inputs:
            return None
        if self._config.scratch_layout == "run":
            return self._config.scratch / task_dir_name(a.run, a.task, a.attempt)
        return await asyncio.to_thread(
            make_task_dir, self._config.scratch, a.run, a.task, a.attempt, self._config.scratch_layout, now
        )

    async def run(
        self, a: TaskAssignment, *, on_start: OnStart, on_finish: OnFinish, on_progress: OnProgress | None = None,
        resume: bool = False,
    ) -> None:  # fmt: skip
        """Run ``a``; report its start (once it has a directory) and always its result;
        long staging reports its progress through ``on_progress``. ``resume``: an earlier
        agent process staged the inputs and started the work (a detached runtime's job);
        follow that work instead (see :mod:`dagon.agent._detached`)."""
        started = time.time()
        workdir = ""
        outcome = Outcome(ResultStatus.ERROR, None, error="the agent stopped before the task ended")
        outputs: tuple[OutputFile, ...] = ()
        staging: list[str] = []
        lost: tuple[str, ...] = ()
        try:
            path = await self.workdir(a, started)
            workdir = str(path) if path is not None else ""
            on_start(StartedTask(a.run, a.task, a.attempt, started, workdir))
            outcome, outputs = await self._run(a, path, staging, on_progress, resume=resume)
        except asyncio.CancelledError:
            outcome = Outcome(ResultStatus.CANCELLED, None, error="cancelled")
            raise
        except (StagingError, SecretError) as exc:
            outcome = Outcome(ResultStatus.ERROR, None, error=str(exc))
            if isinstance(exc, StagingError) and exc.lost:
                own = any(i.task == exc.lost and i.source_run in ("", a.run) for i in a.inputs)
                lost = (exc.lost,) if own else ()
        except Exception as exc:
            log.exception("task %s/%s attempt %d failed inside the agent", a.run, a.task, a.attempt)
            outcome = Outcome(ResultStatus.ERROR, None, error=f"agent error: {type(exc).__name__}: {exc}")
        finally:
            on_finish(
                TaskResult(
                    run=a.run,
                    task=a.task,
                    attempt=a.attempt,
                    status=outcome.status,
                    exit_code=outcome.exit_code,
                    started_at=started,
                    finished_at=time.time(),
                    cpu_time=outcome.cpu_time,
                    max_rss=outcome.max_rss,
                    stderr_tail=outcome.stderr_tail,
                    error=outcome.error,
                    workdir=workdir,
                    outputs=outputs,
                    value=outcome.value,
                    staging="; ".join(staging),
                    lost_inputs=lost,
                )
            )

    def resumable(self, a: TaskAssignment) -> bool:
        """Whether an earlier agent process started ``a``'s work in a detached runtime (blocking: a file check)."""
        runtime = self._runtimes.get(a.runtime)
        if runtime is None or not runtime.detached or (a.runtime == "python" and not a.inputs):
            return False
        path = task_dir(self._config.scratch, a.run, a.task, a.attempt)  # the one it had, either layout
        meta = path / ".dagon"
        return runtime.resumable(Execution(a, a.command, path, {}, meta / "stdout", meta / "stderr"))

    async def _run(
        self, a: TaskAssignment, path: Path | None, staging: list[str], on_progress: OnProgress | None = None,
        *, resume: bool = False,
    ) -> tuple[Outcome, tuple[OutputFile, ...]]:  # fmt: skip
        staged: dict[str, str] = {}
        if a.inputs and not resume:  # resumed: staged by the earlier process, which also started the work
            assert path is not None
            local = [i for i in a.inputs if i.source_host == self._host_id]
            remote = [i for i in a.inputs if i.source_host != self._host_id]
            if local:
                mode = a.stage_mode or self._config.stage_mode
                if mode == "symlink" and a.runtime not in READ_ONLY_LINKS:
                    mode = "copy"  # a process could write through the link into its producer's file
                staged = await asyncio.to_thread(stage_inputs, local, path, host_id=self._host_id, mode=mode)
            if remote:
                staged.update(await self._pull(remote, path, staging, on_progress))
        if a.runtime == "python":
            args = rewrite_value(a.args, staged)
            kwargs = rewrite_value(a.kwargs, staged)
            return await self._python.run(a.command, args, kwargs, time_limit=a.timeout), ()
        assert path is not None
        shown = rewrite_command(a.command, staged)  # what .dagon/command records: placeholders, not secrets
        used: set[str] = set()
        command = self._secrets.reference(shown, used)  # values travel in the environment, never in argv
        env = self._task_env(a, path, used)
        runtime = self._runtimes.get(a.runtime)
        if runtime is not None:
            execution = await self._execution(a, command, path, env)
            resolve = functools.partial(self._resolve_option, used=used)
            execution = dataclasses.replace(execution, resolve=resolve)
            outcome = await (runtime.resume(execution) if resume else runtime.run(execution))
        else:
            outcome = await self._run_process(a, command, path, env, shown)
        if used:
            outcome = dataclasses.replace(
                outcome,
                stderr_tail=self._secrets.redact(outcome.stderr_tail, used),
                error=self._secrets.redact(outcome.error, used),
            )
            # The captured logs too: `dagon logs` and the dashboard serve them from here.
            mask = functools.partial(self._secrets.redact, used=frozenset(used))
            for stream in ("stdout", "stderr"):
                await asyncio.to_thread(rewrite_meta, path, stream, mask)
        outputs: tuple[OutputFile, ...] = ()
        # Hashing runs in a thread; the cheap emptiness check spares the thread hop
        # for the many tasks that write nothing.
        if outcome.status is not ResultStatus.ERROR and has_outputs(path):
            outputs = await asyncio.to_thread(_manifest, path, a.outputs)
        return outcome, outputs

    async def _pull(
        self, items: list[StageInput], workdir: Path, staging: list[str], on_progress: OnProgress | None = None
    ) -> dict[str, str]:
        """Pull inputs produced on other hosts from their data servers (checksummed, resumable)."""
        began = time.monotonic()
        live = PullStats()  # shared with the pulls: what the progress reports and the summary read
        reporter = asyncio.create_task(self._progress_loop(live, began, on_progress)) if on_progress else None
        try:
            return await self._pull_all(items, workdir, staging, live, began)
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter

    @staticmethod
    async def _progress_loop(live: PullStats, began: float, on_progress: OnProgress) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            seconds = time.monotonic() - began
            share = f" of {_size(live.total)} ({live.bytes / live.total:.0%})" if live.total else ""
            note = f"staging: {_size(live.bytes)}{share} in {seconds:.0f} s ({_size(live.bytes / seconds)}/s)"
            with contextlib.suppress(DagonError):
                await on_progress(note)

    async def _pull_all(
        self,
        items: list[StageInput],
        workdir: Path,
        staging: list[str],
        live: PullStats,
        began: float,
    ) -> dict[str, str]:
        staged: dict[str, str] = {}
        sources: set[str] = set()
        ways: set[str] = set()
        for item in items:
            check_input_path(item)
            if not item.url or not (item.token or item.url.startswith("ssh://")):
                raise StagingError(
                    f"input {item.ref}: produced on another host by agent {item.source_agent!r}, which serves"
                    " no data (no data server URL known) — configure its data_host/data_url, or relay it",
                    lost=item.task,  # e.g. its agent is gone: the coordinator runs the producer again
                )
            dest = input_root(workdir, item)
            wait = RELAY_WAIT if item.relay else 0.0
            async with self._transfers:
                if item.url.startswith("ssh://"):
                    stats = await sftp_pull(item, dest, self._ssh)
                    live.files += stats.files
                    live.bytes += stats.bytes
                    ways.add("over sftp")
                else:
                    from dagon.protocol.transport import pull  # the HTTP client loads on first use

                    try:
                        await pull(
                            item.url, self.bind(item.token), dest, concurrency=self._config.max_transfers,
                            wait_for_upload=wait, stats=live, tls=self._tls,
                        )  # fmt: skip
                    except TransportError as exc:
                        via = f" (via the relay; agent {item.source_agent!r} uploads it there)" if item.relay else ""
                        raise StagingError(
                            f"input {item.ref}{via}: {exc}{_loopback_hint(item)}", lost=item.task
                        ) from exc
                    ways.add("via the coordinator's relay" if item.relay else "over http")
            sources.add(item.source_agent)
            staged[item.ref] = str(dest / item.path)
        seconds = time.monotonic() - began
        rate = live.bytes / seconds if seconds > 0 else 0.0
        note = (
            f"pulled {live.files} file(s), {_size(live.bytes)} in {seconds:.2f} s ({_size(rate)}/s)"
            f" from {', '.join(sorted(sources))} {' and '.join(sorted(ways))}"
        )
        if live.retries:
            note += f" ({live.retries} retried)"
        staging.append(note)
        return staged

    def _resolve_option(self, text: str, *, used: set[str]) -> str:
        try:
            return self._secrets.resolve(text, used)
        except SecretError as exc:
            raise ValueError(str(exc)) from None

    def _task_env(self, a: TaskAssignment, path: Path, used: set[str]) -> dict[str, str]:
        env = {key: self._secrets.resolve(value, used) for key, value in a.env.items()}
        env.update(self._secrets.environment(used))
        env.update(DAGON_RUN=a.run, DAGON_TASK=a.task, DAGON_ATTEMPT=str(a.attempt), DAGON_WORKDIR=str(path))
        if self._lifeline is not None:  # marks every process of the task as this agent life's
            env[LIFE_ENV] = self._lifeline.token
        return env

    async def _execution(self, a: TaskAssignment, command: str, path: Path, env: dict[str, str]) -> Execution:
        meta = path / ".dagon"
        await asyncio.to_thread(meta.mkdir, parents=True, exist_ok=True)
        return Execution(
            assignment=a, command=command, workdir=path, env=env, stdout=meta / "stdout",
            stderr=meta / "stderr",
        )  # fmt: skip

    async def _run_process(
        self, a: TaskAssignment, command: str, path: Path, task_env: dict[str, str], shown: str
    ) -> Outcome:
        meta = path / ".dagon"
        # Never a daemon's own environment: it may hold credentials (see AgentConfig.inherit_env).
        env = dict(os.environ) if self._config.inherit_env else dict(self._base_env)
        env.update(task_env)
        return await run_process(
            command,
            cwd=path,
            env=env,
            stdout=meta / "stdout",
            stderr=meta / "stderr",
            time_limit=a.timeout,
            record=meta / "command",
            record_text=shown,
            run_as=self._run_as,
            ledger=self._lifeline.ledger if self._lifeline is not None else None,
            label=f"{a.run}/{a.task}-{a.attempt}",
        )
