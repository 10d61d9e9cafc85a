"""``dagon deploy ssh://user@host[:port]``: install, enroll and start ``dagon-agent`` on a remote host.

(The command is wired in :mod:`dagon.cli._cmd_deploy`; ``python -m dagon._deploy`` does the same.)

Over one SSH connection (host key verified against ``known_hosts``, never accepted on
first sight), into a directory on the remote host (``--dir``, default ``.dagon-agent`` in
the login's home):

1. the wheel of this very dagon version (built from the source tree, or ``--wheel``) is
   pushed over SFTP, with ``--wheelhouse`` wheels of its dependencies for hosts that
   cannot reach a package index;
2. a virtual environment is made with the remote ``python3`` (3.11 or newer) and the
   wheel installed into it;
3. ``agent.toml`` is written (broker, id, labels, slots, scratch, runtimes) and the agent
   enrolled with this coordinator's public key (``dagon-agent enroll``);
4. the agent is started — detached (``setsid``, pid in ``agent.pid``), or as a systemd
   service with ``--service``: ``dagon-agent service install`` (the unit, the service user
   and its home ``/var/lib/dagon``, which is enrolled), then ``systemctl enable --now``.
   On a host where systemd is not running, the unit stays installed and deploy stops with
   an error saying so (exit status 2);
5. ``deploy`` waits until the agent announces itself on the broker (as ``dagon agents``
   would list it).

Idempotent: a digest of the wheel, the configuration and the coordinator key is kept in
``deployed.json``; when nothing changed and the agent runs, nothing is touched. A changed
wheel or configuration is installed and the agent restarted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import posixpath
import shlex
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dagon.agent.runtimes._ssh_pool import SshError, SshPool, SshTarget
from dagon.protocol import Announce, Codec, ConfigError, DagonError, ProtocolError, topics
from dagon.protocol.transport import MqttAuth, MqttTransport

__all__ = ["DeployError", "DeployPlan", "add_arguments", "build_wheel", "deploy", "main", "parse_target", "run_command"]

log = logging.getLogger(__name__)

COMMAND_LIMIT: Final = 600.0
SERVICE_HOME: Final = "/var/lib/dagon"  # the unit's StateDirectory (`dagon-agent service install`'s default)


class DeployError(DagonError):
    """A deployment step failed; the message names the step and what to fix."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployPlan:
    """What to install where (see :func:`deploy`)."""

    target: SshTarget
    broker: str
    coordinator_key: Path
    wheel: Path
    agent_id: str | None = None
    labels: dict[str, str] | None = None
    slots: int | None = None
    runtimes: str | None = None
    remote_dir: str = ".dagon-agent"
    python: str = "python3"
    wheelhouse: Path | None = None
    service: bool = False
    wait: float = 60.0


def parse_target(url: str) -> SshTarget:
    """``ssh://user@host[:port]`` as a target.

    Raises:
        ConfigError: not that shape.
    """
    parsed = urllib.parse.urlsplit(url)
    try:
        port = parsed.port or 22
    except ValueError:
        port = -1
    if parsed.scheme != "ssh" or not parsed.hostname or port < 1 or parsed.path not in ("", "/"):
        raise ConfigError(f"deploy target must look like ssh://user@host[:port], got {url!r}")
    return SshTarget(parsed.hostname, port, urllib.parse.unquote(parsed.username or ""))


async def build_wheel(cache: Path) -> Path:
    """The wheel of the running dagon, built from its source tree into ``cache``.

    Raises:
        DeployError: dagon was not installed from a source tree (pass ``--wheel``), or the build failed.
    """
    root = await asyncio.to_thread(_source_tree, cache)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(cache), str(root),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    wheels = await asyncio.to_thread(lambda: sorted(cache.glob("dagon_engine-*.whl")))
    if proc.returncode != 0 or not wheels:
        raise DeployError(f"building the dagon wheel failed: {out.decode(errors='replace').strip()[-500:]}")
    return wheels[-1]


def _source_tree(cache: Path) -> Path:
    import dagon

    root = Path(dagon.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file() or not (root / "agent").is_dir():
        raise DeployError(
            "dagon was not installed from a source tree: pass --wheel dagon_engine-VERSION-py3-none-any.whl"
        )
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("dagon_engine-*.whl"):
        old.unlink()
    return root


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _toml(plan: DeployPlan, root: str) -> str:
    lines = [f"broker = {json.dumps(plan.broker)}", f"home = {json.dumps(root + '/home')}",
             f"scratch = {json.dumps(root + '/scratch')}"]  # fmt: skip
    if plan.agent_id:
        lines.append(f"id = {json.dumps(plan.agent_id)}")
    if plan.slots:
        lines.append(f"slots = {int(plan.slots)}")
    if plan.runtimes:
        lines.append(f"runtimes = {json.dumps([r.strip() for r in plan.runtimes.split(',') if r.strip()])}")
    if plan.labels:
        lines.append("[labels]")
        lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in sorted(plan.labels.items()))
    return "\n".join(lines) + "\n"


class _Remote:
    """Commands and files on the remote host over one connection."""

    def __init__(self, conn: Any, sftp: Any, target: SshTarget) -> None:
        self.conn = conn
        self.sftp = sftp
        self.target = target

    async def run(self, command: str, step: str, *, check: bool = True) -> str:
        result = await self.conn.run(command, check=False, timeout=COMMAND_LIMIT)
        out = (result.stdout or "") + (result.stderr or "")
        if check and result.exit_status != 0:
            last = next((line for line in reversed(out.strip().splitlines()) if line.strip()), "")
            raise DeployError(f"deploy to {self.target}: {step} failed (exit {result.exit_status}): {last.strip()}")
        return str(result.stdout or "")

    async def read(self, path: str) -> str | None:
        import asyncssh

        try:
            async with self.sftp.open(path, "r") as f:
                return str(await f.read())
        except (OSError, asyncssh.SFTPError):
            return None

    async def write(self, path: str, text: str | bytes) -> None:
        async with self.sftp.open(path, "wb") as f:
            await f.write(text.encode() if isinstance(text, str) else text)


async def deploy(plan: DeployPlan, *, pool: SshPool) -> str:
    """Install and start the agent as ``plan`` says; returns a one-line summary.

    Raises:
        DeployError: a step failed (the message names it).
        SshError: the host cannot be reached or its key is not trusted.
    """
    try:
        coordinator_pub = await asyncio.to_thread(plan.coordinator_key.read_bytes)
    except OSError as exc:
        raise DeployError(f"cannot read the coordinator key {plan.coordinator_key}: {exc.strerror}") from None
    try:
        wheel = await asyncio.to_thread(plan.wheel.read_bytes)
    except OSError as exc:
        raise DeployError(f"cannot read the wheel {plan.wheel}: {exc.strerror} (--wheel)") from None
    conn = await pool.connection(plan.target)
    async with conn.start_sftp_client() as sftp:
        remote = _Remote(conn, sftp, plan.target)
        root = await _prepare(remote, plan)
        config = _toml(plan, root)
        digest = _digest(wheel, config.encode(), coordinator_pub, str(plan.service).encode())
        before = json.loads(await remote.read(f"{root}/deployed.json") or "{}")
        running = await _running(remote, root, plan)
        if before.get("digest") == digest and running:
            return f"{plan.target}: nothing changed (dagon {before.get('version', '?')} already running)"
        await _install(remote, plan, root, wheel)
        await remote.write(f"{root}/agent.toml", config)
        await remote.write(f"{root}/coordinator.pub", coordinator_pub)
        agent = shlex.quote(f"{root}/venv/bin/dagon-agent")
        home = shlex.quote(root + "/home")
        await remote.run(f"DAGON_HOME={home} {agent} enroll --yes {shlex.quote(root + '/coordinator.pub')}", "enroll")
        if running:
            await _stop(remote, root, plan)
        home_dir = await _start(remote, root, plan)
        agent_id = plan.agent_id or (await remote.run(f"cat {shlex.quote(home_dir + '/agent-id')}", "agent id",
                                                      check=False)).strip()  # fmt: skip
        version = (await remote.run(f"{shlex.quote(root + '/venv/bin/python')} -c 'import dagon;"
                                    " print(dagon.__version__)'", "version check")).strip()  # fmt: skip
        await remote.write(f"{root}/deployed.json", json.dumps({"digest": digest, "version": version,
                                                                 "deployed_at": time.time()}))  # fmt: skip
    seen = await wait_online(plan.broker, agent_id, plan.wait) if agent_id else None
    what = "upgraded" if before else "installed"
    online = f"; agent {agent_id} online after {seen:.1f} s" if seen is not None else ""
    return f"{plan.target}: {what} dagon {version} in {root}{online}"


async def _prepare(remote: _Remote, plan: DeployPlan) -> str:
    await remote.sftp.makedirs(plan.remote_dir, exist_ok=True)
    root = str(await remote.sftp.realpath(plan.remote_dir))
    check = f"{shlex.quote(plan.python)} -c 'import sys; assert sys.version_info >= (3, 11), sys.version'"
    await remote.run(check, f"finding Python 3.11+ ({plan.python}; give --python)")
    return root


async def _install(remote: _Remote, plan: DeployPlan, root: str, wheel: bytes) -> None:
    wheels = f"{root}/wheels"
    await remote.sftp.makedirs(wheels, exist_ok=True)
    target = f"{wheels}/{plan.wheel.name}"
    await remote.write(target, wheel)
    if plan.wheelhouse is not None:
        for path in sorted(plan.wheelhouse.glob("*.whl")):
            if path.name != plan.wheel.name:
                await remote.sftp.put(str(path), f"{wheels}/{path.name}")
    venv = shlex.quote(f"{root}/venv")
    await remote.run(f"test -x {venv}/bin/python || {shlex.quote(plan.python)} -m venv {venv}", "creating the venv")
    index = f"--no-index --find-links {shlex.quote(wheels)}" if plan.wheelhouse is not None else ""
    await remote.run(
        f"{venv}/bin/python -m pip install --quiet --disable-pip-version-check {index} --force-reinstall --no-deps"
        f" {shlex.quote(target)} && {venv}/bin/python -m pip install --quiet --disable-pip-version-check {index}"
        f" {shlex.quote(target)}",
        "installing the wheel (pip)",
    )


async def _running(remote: _Remote, root: str, plan: DeployPlan) -> bool:
    if plan.service:
        out = await remote.run("systemctl is-active dagon-agent 2>/dev/null", "service state", check=False)
        return out.strip() == "active"
    pid = (await remote.read(f"{root}/agent.pid") or "").strip()
    if not pid.isdigit():
        return False
    out = await remote.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null", "agent state", check=False)
    return "dagon-agent" in out or "agent_cli" in out


async def _stop(remote: _Remote, root: str, plan: DeployPlan) -> None:
    if plan.service:
        await remote.run("systemctl stop dagon-agent", "stopping the service")
        return
    pid = (await remote.read(f"{root}/agent.pid") or "").strip()
    await remote.run(
        f"kill -TERM {pid} && for i in $(seq 100); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.1; done;"
        f" kill -KILL {pid}",
        "stopping the old agent", check=False,
    )  # fmt: skip


async def _start(remote: _Remote, root: str, plan: DeployPlan) -> str:
    """Start the agent; returns its home on the host (where its key and id are)."""
    q = shlex.quote
    agent = q(root + "/venv/bin/dagon-agent")
    if plan.service:
        # The unit runs the agent as the service user with its home in the unit's StateDirectory
        # (DAGON_HOME there wins over agent.toml's home): that home is the one enrolled.
        out = await remote.run(f"{agent} service install --config {q(root + '/agent.toml')}", "installing the service")
        unit = next((line.split(" ", 2)[2] for line in out.splitlines() if line.startswith("created unit ")),
                    "/etc/systemd/system/dagon-agent.service")  # fmt: skip
        await remote.run(f"DAGON_HOME={SERVICE_HOME} {agent} enroll --yes {q(root + '/coordinator.pub')}"
                         f" && chown -R \"$(stat -c %U {SERVICE_HOME})\": {SERVICE_HOME}",
                         "enrolling the service's agent")  # fmt: skip
        systemd = await remote.run("command -v systemctl >/dev/null && test -d /run/systemd/system && echo yes",
                                   "checking for systemd", check=False)  # fmt: skip
        if systemd.strip() != "yes":
            raise DeployError(
                f"deploy to {remote.target}: installed {unit.strip()} and enrolled the agent, but systemd is not"
                " running on that host (no /run/systemd/system), so the service cannot be started: run"
                " `systemctl enable --now dagon-agent` there once it boots with systemd, or deploy without --service"
            )
        await remote.run("systemctl daemon-reload && systemctl enable --now dagon-agent", "starting the service")
        return SERVICE_HOME
    # Only the agent is backgrounded (so $! is its pid), with every descriptor redirected: the
    # SSH channel closes at once and the agent (its own session) outlives the connection.
    await remote.run(
        f"cd {q(root)} || exit 1; setsid nohup {q(root + '/venv/bin/dagon-agent')} --config agent.toml"
        f" >> agent.log 2>&1 < /dev/null & echo $! > {q(root + '/agent.pid')}",
        "starting the agent",
    )
    return root + "/home"


async def wait_online(broker: str, agent_id: str, limit: float) -> float:
    """Seconds until ``agent_id`` announced itself on ``broker``.

    Raises:
        DeployError: it did not within ``limit`` seconds.
    """
    began = time.monotonic()
    codec = Codec(sender="deploy")
    protocol = os.environ.get("DAGON_MQTT_PROTOCOL", "5")
    auth = MqttAuth.from_env(os.environ)
    client_id = f"dagon-deploy-{os.getpid()}-{os.urandom(2).hex()}"
    try:
        async with (
            asyncio.timeout(limit),
            MqttTransport(broker, client_id=client_id, protocol=protocol, auth=auth) as transport,
        ):
            await transport.subscribe(topics.agent_status(agent_id))
            async for message in transport.messages():
                try:
                    decoded = codec.decode(message.payload).message
                except ProtocolError:
                    continue
                if isinstance(decoded, Announce) and decoded.agent == agent_id:
                    return time.monotonic() - began
    except TimeoutError:
        pass
    raise DeployError(
        f"agent {agent_id} did not appear on {broker} within {limit:g} s: check that the remote host reaches the"
        f" broker and read {posixpath.join('<dir>', 'agent.log')} on it"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``dagon deploy`` (``--broker`` included)."""
    p.add_argument("target", help="ssh://user@host[:port]")
    p.add_argument(
        "--broker", help="broker URL the agent connects to, as that host reaches it (default: $DAGON_BROKER)"
    )
    p.add_argument("--id", help="agent id (default: a stable id the agent makes)")
    p.add_argument("--labels", help="labels k=v,… for placement")
    p.add_argument("--slots", type=int, help="concurrent tasks (default: the host's CPU count)")
    p.add_argument("--runtimes", help="runtimes the agent offers (e.g. docker,slurm; default: detected)")
    p.add_argument("--service", action="store_true", help="install and start it as a systemd service")
    p.add_argument(
        "--dir",
        help="install directory on the host (default: ~/.dagon-agent; with --service"
        " /opt/dagon-agent, which the service user can read)",
    )
    p.add_argument("--python", default="python3", help="Python 3.11+ on the host (default: python3)")
    p.add_argument("--wheel", type=Path, help="the dagon wheel to install (default: built from this source tree)")
    p.add_argument("--wheelhouse", type=Path, help="directory of dependency wheels, for hosts without a package index")
    p.add_argument("--key", type=Path, help="SSH private key (default: $DAGON_SSH_KEY or ~/.ssh/id_ed25519)")
    p.add_argument("--known-hosts", type=Path, help="trusted host keys (default: ~/.ssh/known_hosts)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the agent to come online")


def run_command(args: argparse.Namespace, *, home: Path, broker: str | None, env: Mapping[str, str]) -> str:
    """Carry out ``dagon deploy`` as parsed; returns the one-line summary.

    Raises:
        DagonError: a configuration mistake or a failed step (one line, naming the fix).
    """
    from dagon.agent._config import parse_labels

    if not broker:
        raise ConfigError("no broker for the agent: pass --broker mqtt://HOST:PORT (as that host reaches it)")
    key = args.key or (Path(env["DAGON_SSH_KEY"]) if env.get("DAGON_SSH_KEY") else None)
    pool = SshPool(known_hosts=args.known_hosts or Path.home() / ".ssh" / "known_hosts",
                   default_key=key or Path.home() / ".ssh" / "id_ed25519")  # fmt: skip
    coordinator_key = home / "keys" / "coordinator.pub"
    if not coordinator_key.is_file():
        raise ConfigError(f"no coordinator key at {coordinator_key}: run `dagon keys init` (or set DAGON_HOME)")

    remote_dir = args.dir or ("/opt/dagon-agent" if args.service else ".dagon-agent")

    async def go() -> str:
        try:
            wheel = args.wheel or await build_wheel(home / "deploy")
            plan = DeployPlan(
                target=parse_target(args.target), broker=broker, coordinator_key=coordinator_key, wheel=wheel,
                agent_id=args.id, labels=parse_labels(args.labels) if args.labels else None, slots=args.slots,
                runtimes=args.runtimes, remote_dir=remote_dir, python=args.python, wheelhouse=args.wheelhouse,
                service=args.service, wait=args.wait,
            )  # fmt: skip
            return await deploy(plan, pool=pool)
        except SshError as exc:
            raise DeployError(str(exc)) from None
        except OSError as exc:
            raise DeployError(f"deploy: {exc}") from None
        finally:
            await pool.aclose()

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    """``python -m dagon._deploy`` (the same as ``dagon deploy``): 0 deployed or unchanged, 2 on an error."""
    from dagon._settings import broker_from_env, dagon_home

    p = argparse.ArgumentParser(prog="dagon deploy", description="Install, enroll and start dagon-agent over SSH.")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        summary = run_command(args, home=dagon_home(), broker=broker_from_env(args.broker), env=os.environ)
    except DagonError as exc:
        sys.stderr.write(f"dagon deploy: error: {exc}\n")
        return 2
    sys.stdout.write(summary + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
