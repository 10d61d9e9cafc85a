"""``dagon deploy ssh://…`` against a real sshd in a network namespace, with a Mosquitto on the bridge.

The remote host has no package index (the namespace has no route out), so the
deployment carries a wheelhouse: this dagon's wheel and its dependencies, built once
per session with pip.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _broker import MOSQUITTO_MISSING, Mosquitto, free_port, missing, mosquitto_binary
from _sshd import RemoteHost, namespaced_sshd

from dagon._deploy import DeployPlan, build_wheel, deploy, parse_target
from dagon._keys import coordinator_signer
from dagon.agent.runtimes._ssh_pool import SshPool, SshTarget
from dagon.protocol import ConfigError

pytestmark = [pytest.mark.ssh, pytest.mark.mosquitto, pytest.mark.slow]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import asyncio

    house = tmp_path_factory.mktemp("wheelhouse")
    wheel = asyncio.run(build_wheel(house))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(house), str(wheel)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return wheel, house


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteHost]:
    with namespaced_sshd(tmp_path) as host:
        yield host


@pytest.fixture
def broker(remote: RemoteHost, tmp_path: Path) -> Iterator[Mosquitto]:
    binary = mosquitto_binary()
    if binary is None:
        missing(MOSQUITTO_MISSING)
    # On the bridge's own address: reachable from the namespace, not from outside the machine.
    server = Mosquitto(binary=binary, workdir=tmp_path / "mosquitto", host=remote.gateway, port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


def stop_remote_agent(root: Path) -> None:
    pid_file = root / "agent.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def plan(
    tmp_path: Path, remote: RemoteHost, broker: Mosquitto, wheelhouse: tuple[Path, Path], **extra: object
) -> DeployPlan:
    home = tmp_path / "coordinator"
    coordinator_signer(home)  # `dagon keys init`
    values: dict[str, object] = {
        "target": SshTarget(remote.address, 22, "root"), "broker": broker.url,
        "coordinator_key": home / "keys" / "coordinator.pub", "wheel": wheelhouse[0], "wheelhouse": wheelhouse[1],
        "agent_id": "edge-1", "labels": {"site": "lab"}, "slots": 1, "remote_dir": str(tmp_path / "remote"),
        "python": "/usr/bin/python3", "wait": 90.0,
    }  # fmt: skip
    values.update(extra)
    return DeployPlan(**values)  # type: ignore[arg-type]


async def test_deploy_installs_enrolls_starts_and_is_idempotent(
    tmp_path: Path, remote: RemoteHost, broker: Mosquitto, wheelhouse: tuple[Path, Path]
) -> None:
    pool = SshPool(known_hosts=remote.known_hosts, default_key=remote.client_key)
    the_plan = plan(tmp_path, remote, broker, wheelhouse)
    try:
        summary = await deploy(the_plan, pool=pool)
        assert "installed dagon" in summary and "agent edge-1 online" in summary, summary
        root = tmp_path / "remote"
        assert (root / "home" / "keys" / "trusted").exists() or list((root / "home" / "keys").iterdir())
        assert 'broker = "' + broker.url + '"' in (root / "agent.toml").read_text()
        first_pid = (root / "agent.pid").read_text()
        # Nothing changed: nothing is touched (same agent process).
        again = await deploy(the_plan, pool=pool)
        assert "nothing changed" in again
        assert (root / "agent.pid").read_text() == first_pid
        # A changed configuration is applied and the agent restarted.
        changed = await deploy(plan(tmp_path, remote, broker, wheelhouse, slots=2), pool=pool)
        assert "upgraded dagon" in changed and "online" in changed
        assert (root / "agent.pid").read_text() != first_pid
        assert "slots = 2" in (root / "agent.toml").read_text()
    finally:
        stop_remote_agent(tmp_path / "remote")
        await pool.aclose()


def test_the_command_line_says_what_to_fix(tmp_path: Path, remote: RemoteHost) -> None:
    env = {**os.environ, "DAGON_HOME": str(tmp_path / "home"), "COLUMNS": "400"}
    cmd = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())", "deploy"]
    no_broker = subprocess.run([*cmd, f"ssh://root@{remote.address}"], env={**env, "DAGON_BROKER": ""},
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert no_broker.returncode == 2 and "pass --broker" in no_broker.stderr
    coordinator_signer(tmp_path / "home")

    def deploy_cli(known_hosts: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cmd, f"ssh://root@{remote.address}", "--broker", "mqtt://127.0.0.1:1", "--known-hosts",
             str(known_hosts), "--key", str(remote.client_key), "--wheel", str(tmp_path / "x.whl")],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    no_wheel = deploy_cli(remote.known_hosts)
    assert no_wheel.returncode == 2 and "cannot read the wheel" in no_wheel.stderr and "--wheel" in no_wheel.stderr
    (tmp_path / "x.whl").write_bytes(b"")
    no_file = deploy_cli(tmp_path / "nothing")
    assert no_file.returncode == 2
    assert no_file.stderr.count("\n") == 1 and "known_hosts file" in no_file.stderr
    (tmp_path / "kh").write_text("")
    unknown = deploy_cli(tmp_path / "kh")
    assert unknown.returncode == 2
    assert remote.host_key.get_fingerprint("sha256") in unknown.stderr and "never auto-accepted" in unknown.stderr


@pytest.fixture
def host_with_system_dirs(tmp_path: Path) -> Iterator[RemoteHost]:
    """The namespaced host with copy-on-write /etc, /var/lib and /opt: the service install
    (a user, a unit, a state directory) happens there, never in this machine's directories."""
    with namespaced_sshd(tmp_path, private=("/etc", "/var/lib", "/opt")) as host:
        yield host


def test_service_install_runs_on_the_host_and_says_systemd_is_not_running(
    tmp_path: Path, host_with_system_dirs: RemoteHost, wheelhouse: tuple[Path, Path]
) -> None:
    remote = host_with_system_dirs
    home = tmp_path / "coordinator"
    coordinator_signer(home)  # `dagon keys init`
    env = {**os.environ, "DAGON_HOME": str(home), "COLUMNS": "400"}
    root = tmp_path / "remote"
    out = subprocess.run(
        [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())", "deploy",
         f"ssh://root@{remote.address}", "--broker", f"mqtt://{remote.gateway}:1883", "--known-hosts",
         str(remote.known_hosts), "--key", str(remote.client_key), "--wheel", str(wheelhouse[0]), "--wheelhouse",
         str(wheelhouse[1]), "--dir", str(root), "--python", "/usr/bin/python3", "--service", "--wait", "5"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr  # `dagon deploy`: 2 on an error
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: deploy to root@{remote.address}:22: installed")
    assert "installed /etc/systemd/system/dagon-agent.service and enrolled the agent" in line
    assert "systemd is not running on that host" in line and "deploy without --service" in line
    layers = remote.work / "overlay"
    unit = layers / "etc" / "upper" / "systemd" / "system" / "dagon-agent.service"
    assert not Path("/etc/systemd/system/dagon-agent.service").exists()  # this machine's /etc is untouched
    text = unit.read_text()
    assert f"ExecStart={root}/venv/bin/dagon-agent --config {root}/agent.toml" in text
    assert "User=dagon" in text and "Environment=DAGON_HOME=/var/lib/dagon" in text
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "dagon-agent.service" not in verify.stdout + verify.stderr  # unknown keys only warn: none here
    # The service user exists on that host, and the service's home holds the enrolled coordinator key.
    assert "\ndagon:" in (layers / "etc" / "upper" / "passwd").read_text()
    assert list((layers / "var_lib" / "upper" / "dagon" / "keys" / "trusted").iterdir())


def test_targets_are_parsed_strictly() -> None:
    assert parse_target("ssh://pi@10.0.0.5:2222") == SshTarget("10.0.0.5", 2222, "pi")
    assert parse_target("ssh://node7") == SshTarget("node7", 22, "")
    for bad in ("node7", "http://x", "ssh://h:99999", "ssh://h/path"):
        with pytest.raises(ConfigError, match="ssh://user@host"):
            parse_target(bad)
