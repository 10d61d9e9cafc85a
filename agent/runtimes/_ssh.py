"""The SSH runtime: agentless execution on a host that runs no agent (DAGonStar's ``ip=``).

For each attempt the agent, over one pooled connection per host (:class:`SshPool`):

1. creates a remote scratch directory ``<remote_scratch>/<run>/<task>-<attempt>`` and uploads
   the staged inputs (``.dagon/inputs``) into it over SFTP; paths of the local scratch
   directory in the command and environment are rewritten to the remote one;
2. runs the command with bash in its own process group under a small wrapper that kills
   that group when its standard input closes — on timeout or cancellation the agent
   closes it, and when the connection is lost sshd closes it — so a remote task never
   outlives its attempt; the real exit code comes back;
3. downloads what the task wrote (regular files only; symbolic links are not followed)
   and its stdout/stderr into the local scratch directory, where manifests, staging to
   consumers and garbage collection work as for any task;
4. deletes the remote scratch directory (its contents now live locally) unless
   ``keep_remote`` is set.

Task options (``runtime_options``): ``host`` (or DAGonStar's ``ip``, required),
``username`` (``ssh_username``; default: the agent's user), ``keypath`` (default: the
agent's ``ssh_key``), ``port`` (``ssh_port``; 22), ``remote_scratch`` (default
``dagon-scratch`` under the remote home), ``keep_remote``, and ``runtime`` — how the
command runs there: ``process`` (default), ``docker``, ``apptainer`` or ``slurm`` (see
:mod:`dagon.agent.runtimes._ssh_inner`), whose options are given alongside (DAGonStar's
names) or as an ``options`` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import posixpath
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._jobs import OptionError, Options, object_name, read_tail, run_cleanup
from dagon.agent.runtimes._ssh_inner import INNER_OPTIONS, RemoteScript, remote_script
from dagon.agent.runtimes._ssh_pool import SshError, SshPool, SshTarget
from dagon.protocol import ResultStatus

__all__ = ["SSH_OPTIONS", "SshRuntime", "ssh_target"]

log = logging.getLogger(__name__)

SSH_OPTIONS: Final = frozenset(
    {"host", "ip", "username", "ssh_username", "keypath", "port", "ssh_port", "remote_scratch", "keep_remote",
     "runtime", "options"}
)  # fmt: skip
STOP_WAIT: Final = 10.0
# Runs in the remote task directory ($1). The task gets its own process group (set -m);
# the watcher kills that group once stdin — the SSH channel — reaches end of file, and
# runs .dagon/cleanup.sh (docker rm -f, scancel) for work living outside the group.
WRAPPER: Final = """\
cd "$1" || exit 127
set -m
bash .dagon/command.sh </dev/null >.dagon/stdout 2>.dagon/stderr &
task=$!
echo "$task" > .dagon/pid
{ while read -r _; do :; done; kill -TERM -- "-$task" 2>/dev/null
  if [ -f .dagon/cleanup.sh ]; then bash .dagon/cleanup.sh >/dev/null 2>&1; fi
  sleep 2; kill -KILL -- "-$task" 2>/dev/null; } <&0 &
watch=$!
wait "$task"; code=$?
kill -KILL -- "-$task" 2>/dev/null
kill "$watch" 2>/dev/null
exit "$code"
"""


def _either(raw: Mapping[str, Any], *keys: str) -> Any:
    found = [k for k in keys if raw.get(k) is not None]
    if len(found) > 1 and len({str(raw[k]) for k in found}) > 1:
        raise OptionError(f"ssh options {found} disagree; give only one of them")
    return raw[found[0]] if found else None


def ssh_target(raw: Mapping[str, Any], *, known: frozenset[str] = SSH_OPTIONS) -> tuple[SshTarget, Options]:
    """The login target of a task's options (native or DAGonStar names).

    Raises:
        OptionError: no host, a bad port, or an unknown option.
    """
    opts = Options("ssh", raw, known)
    host = _either(raw, "host", "ip")
    if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
        raise OptionError(f"ssh option 'ip' (or 'host') must name the remote host, got {host!r}")
    port = _either(raw, "port", "ssh_port")
    if port is None:
        port = 22
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise OptionError(f"ssh option 'ssh_port' must be a TCP port number, got {port!r}")
    user = _either(raw, "username", "ssh_username")
    if user is not None and (not isinstance(user, str) or not user.strip()):
        raise OptionError(f"ssh option 'ssh_username' must be a user name, got {user!r}")
    key = raw.get("keypath")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise OptionError(f"ssh option 'keypath' must be a path to a private key, got {key!r}")
    return SshTarget(host.strip(), port, user or "", Path(key).expanduser() if key else None), opts


def _uploads(root: Path, allowed: Path) -> list[tuple[Path, str]]:
    """Regular files under ``root`` with their relative paths.

    Staged inputs may be symbolic links to a producer's directory: a link is followed only
    when it leads inside ``allowed`` (the agent's scratch root), never elsewhere on the
    agent's host (a task could plant a link to ``/etc`` in its output), and never twice.
    """
    allowed = allowed.resolve()
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    pending = [(root, "")]
    while pending:
        directory, rel_dir = pending.pop()
        real = directory.resolve()
        if real in seen or not real.is_relative_to(allowed):
            continue
        seen.add(real)
        for entry in sorted(directory.iterdir()):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            target = entry.resolve()
            if entry.is_symlink() and not target.is_relative_to(allowed):
                log.warning("ssh: not uploading %s: it links outside the scratch root (%s)", entry, target)
            elif target.is_dir():
                pending.append((entry, rel))
            elif target.is_file():
                found.append((entry, rel))
    return found


class SshRuntime(Runtime):
    """Runs each attempt on a remote host over SSH.

    Args:
        known_hosts: the ``known_hosts`` file host keys are verified against.
        default_key: private key used when a task gives no ``keypath`` (the agent's ``ssh_key``).
        remote_scratch: remote scratch root (relative paths are under the login's home).
        keepalive: seconds between SSH keepalive probes.
        pool: share an existing pool (the cloud runtime does).
    """

    name: ClassVar[str] = "ssh"

    def __init__(
        self,
        *,
        known_hosts: Path | None = None,
        default_key: Path | None = None,
        remote_scratch: str = "dagon-scratch",
        keepalive: float = 15.0,
        pool: SshPool | None = None,
    ) -> None:
        self._pool = pool or SshPool(
            known_hosts=known_hosts or Path.home() / ".ssh" / "known_hosts", default_key=default_key,
            keepalive=keepalive,
        )  # fmt: skip
        self._remote_scratch = remote_scratch

    @property
    def pool(self) -> SshPool:
        return self._pool

    async def run(self, execution: Execution) -> Outcome:
        raw = execution.assignment.runtime_options
        try:
            inner = raw.get("runtime") or "process"
            if not isinstance(inner, str) or inner not in INNER_OPTIONS:
                raise OptionError(f"the ssh runtime runs {', '.join(map(repr, INNER_OPTIONS))} tasks, not {inner!r}")
            nested = raw.get("options")
            if nested is not None and not isinstance(nested, Mapping):
                raise OptionError(f"ssh option 'options' must be a table of {inner} options, got {nested!r}")
            target, opts = ssh_target(raw, known=SSH_OPTIONS | INNER_OPTIONS[inner])
            inner_options = dict(nested) if nested else {k: v for k, v in raw.items() if k not in SSH_OPTIONS}
            self._script(inner, inner_options, execution, execution.command, dict(execution.env))  # checks them
            root = opts.text("remote_scratch") or self._remote_scratch
            keep = opts.flag("keep_remote")
        except OptionError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        return await self.run_on(
            target, execution, remote_scratch=root, keep_remote=keep, inner=inner, inner_options=inner_options
        )

    @staticmethod
    def _script(
        inner: str, options: Mapping[str, Any], execution: Execution, command: str, env: dict[str, str]
    ) -> RemoteScript:
        a = execution.assignment
        name = object_name("dagon", a.run, a.task, a.attempt, limit=63)
        return remote_script(inner, options, env=env, command=command, name=name, task=a.task, cpus=a.cpus,
                             memory=a.memory, timeout=a.timeout)  # fmt: skip

    async def run_on(
        self,
        target: SshTarget,
        execution: Execution,
        *,
        remote_scratch: str | None = None,
        keep_remote: bool = False,
        inner: str = "process",
        inner_options: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Run ``execution`` on ``target`` (also used by the cloud runtime once its instance is up).

        ``inner`` (``process``, ``docker``, ``apptainer``, ``slurm``) and its options say how the
        command runs there.
        """
        import asyncssh

        try:
            conn = await self._pool.connection(target)
        except SshError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        local = execution.workdir
        rel = f"{local.parent.name}/{local.name}"
        try:
            async with conn.start_sftp_client() as sftp:
                root = remote_scratch or self._remote_scratch
                await sftp.makedirs(posixpath.join(root, rel, ".dagon"), exist_ok=True)
                remote = await sftp.realpath(posixpath.join(root, rel))
                await self._stage_in(sftp, local, remote)
                command = execution.command.replace(str(local), remote)
                env = {k: v.replace(str(local), remote) for k, v in execution.env.items()}
                script = self._script(inner, inner_options or {}, execution, command, env)
                private = asyncssh.SFTPAttrs(permissions=0o700)
                files = {"command.sh": script.command, "run.sh": WRAPPER, "cleanup.sh": script.cleanup}
                for name, text in files.items():
                    if text is not None:
                        async with sftp.open(f"{remote}/.dagon/{name}", "w", private) as f:
                            await f.write(text)
            try:
                outcome = await self._execute(conn, target, remote, execution)
            finally:
                await run_cleanup(lambda: self._collect(target, remote, execution, keep_remote))
        except (OSError, asyncssh.Error) as exc:
            self._pool.discard(target)
            return Outcome(ResultStatus.ERROR, None, error=f"ssh: {target}: {getattr(exc, 'reason', None) or exc}")
        return dataclasses.replace(outcome, stderr_tail=await asyncio.to_thread(read_tail, execution.stderr))

    async def _stage_in(self, sftp: Any, local: Path, remote: str) -> None:
        inputs = local / ".dagon" / "inputs"
        if not inputs.is_dir():
            return
        for path, rel in await asyncio.to_thread(_uploads, inputs, local.parent.parent):  # the scratch root
            target = f"{remote}/.dagon/inputs/{rel}"
            await sftp.makedirs(posixpath.dirname(target), exist_ok=True)
            await sftp.put(str(path), target)

    async def _execute(self, conn: Any, target: SshTarget, remote: str, execution: Execution) -> Outcome:
        timeout = execution.assignment.timeout
        q = shlex.quote(remote)
        process = await conn.create_process(f"exec bash {q}/.dagon/run.sh {q}", encoding=None)
        try:
            async with asyncio.timeout(timeout):
                done = await process.wait()
        except TimeoutError:
            await run_cleanup(lambda: _stop(process))
            return Outcome(ResultStatus.TIMEOUT, process.exit_status,
                           error=f"killed on {target.host} after the {timeout:g} s timeout")  # fmt: skip
        except asyncio.CancelledError:
            await run_cleanup(lambda: _stop(process))
            raise
        if done.exit_status is None:
            self._pool.discard(target)
            return Outcome(
                ResultStatus.ERROR, None,
                error=f"ssh: the connection to {target} was lost while the task ran (the remote task is killed"
                " when sshd notices)",
            )  # fmt: skip
        code = done.exit_status
        return Outcome(ResultStatus.SUCCEEDED if code == 0 else ResultStatus.FAILED, code)

    async def _collect(self, target: SshTarget, remote: str, execution: Execution, keep: bool) -> None:
        """Bring outputs and stdout/stderr back; delete the remote directory (best effort)."""
        import asyncssh

        try:
            conn = await self._pool.connection(target)
            async with conn.start_sftp_client() as sftp:
                await _download(sftp, remote, execution.workdir)
                for name, dest in (("stdout", execution.stdout), ("stderr", execution.stderr)):
                    with contextlib.suppress(OSError, asyncssh.SFTPError):
                        await sftp.get(f"{remote}/.dagon/{name}", str(dest))
                if not keep:
                    await sftp.rmtree(remote, ignore_errors=True)
                    with contextlib.suppress(OSError, asyncssh.SFTPError):
                        await sftp.rmdir(posixpath.dirname(remote))  # the run's directory, once empty
        except Exception as exc:  # the outcome stands; what is missing shows in the manifest
            log.warning("ssh: collecting %s from %s failed: %s", remote, target, exc)

    async def aclose(self) -> None:
        await self._pool.aclose()


async def _stop(process: Any) -> None:
    """Close the task's stdin (the wrapper then kills its process group) and wait for the exit."""
    with contextlib.suppress(Exception):
        process.stdin.write_eof()
    try:
        async with asyncio.timeout(STOP_WAIT):
            await process.wait()
    except (TimeoutError, Exception):
        process.close()


async def _download(sftp: Any, remote: str, local: Path) -> None:
    """Copy regular files under ``remote`` (not ``.dagon``, no symlinks) into ``local``."""
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        for entry in await sftp.readdir(posixpath.join(remote, rel_dir) if rel_dir else remote):
            name = entry.filename
            if name in (".", "..") or (not rel_dir and name == ".dagon"):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            mode = entry.attrs.permissions or 0
            if stat.S_ISDIR(mode):
                pending.append(rel)
            elif stat.S_ISREG(mode):
                dest = local / rel
                await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
                await sftp.get(posixpath.join(remote, rel), str(dest))
