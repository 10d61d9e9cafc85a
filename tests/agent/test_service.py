"""The systemd unit: what it says, ``systemd-analyze verify`` on it (its output read, not only its exit
code: unknown keys only warn), and ``dagon-agent service install/uninstall`` into a scratch unit dir."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _broker import missing, stop_process

from dagon.agent._service import ServiceSpec, render_unit
from dagon.cli._cmd_device import service_main
from dagon.protocol import ConfigError


def verify(unit_text: str, tmp_path: Path, name: str = "dagon-agent") -> str:
    """``systemd-analyze verify``: returns everything it printed (must be nothing for a clean unit)."""
    tool = shutil.which("systemd-analyze") or missing("systemd-analyze not installed; run .ci/setup (apt systemd)")
    unit = tmp_path / f"{name}.service"
    unit.write_text(unit_text)
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return (out.stdout + out.stderr).strip()


def keys(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "dagon-agent"  # outside /home and /root: where this python lives is the next test's
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    text = render_unit(ServiceSpec(command=(str(script),)))
    assert verify(text, tmp_path) == ""  # no warning at all, not only exit 0
    k = keys(text)
    assert k["Type"] == "notify" and k["NotifyAccess"] == "main" and k["WatchdogSec"] == "30"
    assert k["Restart"] == "on-failure" and k["StartLimitIntervalSec"] == "0" and k["KillMode"] == "control-group"
    assert k["User"] == "dagon" and k["Group"] == "dagon" and k["StateDirectory"] == "dagon"
    assert k["After"].startswith("network-online.target") and k["Wants"] == "network-online.target"
    assert k["EnvironmentFile"] == "-/etc/dagon/agent.env" and k["ExecStart"].endswith("--config /etc/dagon/agent.toml")
    assert k["Environment"] == "PYTHONUNBUFFERED=1"  # (the last of three Environment= lines)
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables", "ProtectControlGroups"):
        assert k[hardening] == "yes"
    assert k["ProtectSystem"] == "strict" and k["ProtectHome"] == "yes" and k["CapabilityBoundingSet"] == ""
    assert "ReadWritePaths" not in k  # the default scratch is inside the state directory
    assert "PrivateDevices" not in k and "ProtectClock" not in k  # both would hide the sensors
    assert "RestartSteps" not in k  # systemd 252 (Debian 12, Raspberry Pi OS) does not know it
    assert k["RestartSec"] == "30"  # ... so a fixed, longer delay bounds a crash loop instead


@pytest.mark.parametrize("where", ["/home/pi/venv/bin/dagon-agent", "/root/.pyenv/shims/dagon-agent"])
def test_an_agent_installed_under_a_home_can_still_read_it(where: str) -> None:
    """``ProtectHome=yes`` would hide a venv or pyenv under /home or /root from the service: read-only then."""
    assert keys(render_unit(ServiceSpec(command=(where,))))["ProtectHome"] == "read-only"
    assert keys(render_unit(ServiceSpec(command=("/opt/dagon/bin/dagon-agent",))))["ProtectHome"] == "yes"


def test_groups_scratch_docker_and_newer_systemd(tmp_path: Path) -> None:
    spec = ServiceSpec(scratch=Path("/srv/dagon scratch"), groups=("dialout", "no-such-group"), docker=True,
                       watchdog=0, systemd=254)  # fmt: skip
    text = render_unit(spec)
    k = keys(text)
    assert k["ReadWritePaths"] == "/srv/dagon scratch"
    assert k["SupplementaryGroups"].split() == [g for g in ("dialout", "docker") if _group(g)]
    assert "# groups not on this machine (left out): no-such-group" in text
    assert "root-equivalent" in text and "WatchdogSec" not in k
    assert k["RestartSec"] == "5" and k["RestartSteps"] == "8" and k["RestartMaxDelaySec"] == "300"
    printed = verify(text, tmp_path)  # systemd 252 here: the newer keys warn, and only they
    assert printed.count("Unknown key") == 2 and "RestartSteps" in printed and "RestartMaxDelaySec" in printed


def _group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def test_specifiers_and_blanks_in_paths_are_escaped(tmp_path: Path) -> None:
    spec = ServiceSpec(config=Path("/etc/dagon/100% sure $HOME.toml"), command=(str(tmp_path / "bin x/dagon-agent"),))
    (tmp_path / "bin x").mkdir()
    (tmp_path / "bin x" / "dagon-agent").write_text("#!/bin/sh\n")
    (tmp_path / "bin x" / "dagon-agent").chmod(0o755)
    text = render_unit(spec)
    assert 'ExecStart="' in text and '--config "/etc/dagon/100%% sure $$HOME.toml"' in text
    assert verify(text, tmp_path) == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "Root!"}, "not a valid system user name"),
        ({"user": "root"}, "a dedicated user"),
        ({"user": "nobody"}, "a dedicated user"),
        ({"name": "a b"}, "unit name"),
        ({"watchdog": -1}, "watchdog must be"),
        ({"config": Path("agent.toml")}, "must be an absolute path"),
        ({"groups": ("dial out",)}, "not a valid group name"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServiceSpec(**kwargs)  # type: ignore[arg-type]


def test_install_and_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    units, config, scratch = tmp_path / "units", tmp_path / "etc" / "agent.toml", tmp_path / "scratch"
    state = f"dagon-test-{os.getpid()}-{os.urandom(3).hex()}"  # /var/lib/<state>: removed below
    argv = ["install", "--user", "daemon", "--config", str(config), "--scratch", str(scratch), "--state", state,
            "--unit-dir", str(units), "--broker", "mqtts://broker.lan:8883"]  # fmt: skip
    if os.geteuid() != 0:
        assert service_main(argv) == 2
        assert "needs root" in capsys.readouterr().err
        return
    try:
        _install_and_uninstall(argv, units, config, scratch, state, capsys)
    finally:
        shutil.rmtree(Path("/var/lib") / state, ignore_errors=True)


def _install_and_uninstall(
    argv: list[str], units: Path, config: Path, scratch: Path, state: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert service_main(argv) == 0
    out = capsys.readouterr().out
    unit = units / "dagon-agent.service"
    assert f"created unit {unit}" in out and "enroll" in out and "doctor" in out
    assert 'broker = "mqtts://broker.lan:8883"' in config.read_text()
    assert f'home = "/var/lib/{state}"' in config.read_text() and f'scratch = "{scratch}"' in config.read_text()
    home = Path("/var/lib") / state  # ready for `dagon-agent enroll` before the first start
    assert home.stat().st_uid == pwd.getpwnam("daemon").pw_uid and home.stat().st_mode & 0o777 == 0o750
    assert scratch.stat().st_uid == pwd.getpwnam("daemon").pw_uid and scratch.stat().st_mode & 0o777 == 0o750
    assert f"ReadWritePaths={scratch}" in unit.read_text()
    (units / "check").mkdir()
    assert verify(unit.read_text(), units / "check") == ""
    # A typo in an existing config is reported at install time, not at the first start on the device.
    config.write_text('brokr = "mqtt://x"\n')
    assert service_main(argv) == 2
    assert "unknown setting(s) ['brokr']" in capsys.readouterr().err
    assert service_main(["uninstall", "--unit-dir", str(units)]) == 0
    assert not unit.exists() and "kept: the service user" in capsys.readouterr().out
    assert service_main(["uninstall", "--unit-dir", str(units)]) == 0  # idempotent
    (units / "dagon-agent.service").write_text("[Service]\nExecStart=/bin/true\n")  # someone else's unit
    assert service_main(["uninstall", "--unit-dir", str(units)]) == 2
    assert "not removing it" in capsys.readouterr().err and (units / "dagon-agent.service").exists()


def test_print_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    assert service_main(["install", "--print", "--config", str(config), "--unit-dir", str(tmp_path / "u")]) == 0
    assert "Type=notify" in capsys.readouterr().out
    assert not config.exists() and not (tmp_path / "u").exists()


def _exec_start(unit: str) -> list[str]:
    """The unit's ExecStart as systemd would split it (specifiers and $ unescaped)."""
    import shlex

    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line.removeprefix("ExecStart="))]


@pytest.mark.mosquitto
def test_the_units_command_starts_an_agent_the_way_systemd_would(mosquitto: Any, tmp_path: Path) -> None:
    """ExecStart, Environment= and WatchdogSec= of a rendered unit, played by hand: no systemd PID 1 here."""
    from _keys import COORDINATOR

    from dagon.protocol import public_key_line

    config = tmp_path / "etc" / "agent.toml"
    config.parent.mkdir()
    config.write_text(f'broker = "{mosquitto.url}"\nid = "svc-test"\nruntimes = "none"\n')
    unit = render_unit(ServiceSpec(config=config))
    argv = _exec_start(unit)
    k = keys(unit)
    home = tmp_path / "state"  # stands in for StateDirectory=
    (home / "keys" / "trusted").mkdir(parents=True)
    (home / "keys" / "trusted" / "c.pub").write_text(public_key_line(COORDINATOR.public_key, "coordinator"))
    notify = tmp_path / "notify"
    env = {k2: v for k2, v in os.environ.items() if not k2.startswith("DAGON_")}
    env.update(DAGON_HOME=str(home), DAGON_SCRATCH=str(home / "scratch"), PYTHONUNBUFFERED="1",
               NOTIFY_SOCKET=str(notify), WATCHDOG_USEC=str(int(k["WatchdogSec"]) * 1_000_000))  # fmt: skip
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(60)
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1\nSTATUS=") and "broker connected" in ready, ready
            assert sock.recv(4096) == b"WATCHDOG=1"  # the first ping right away, then every WatchdogSec/2
            proc.send_signal(getattr(signal, k["KillSignal"]))
            while not (message := sock.recv(4096).decode()).startswith("STOPPING=1"):
                assert message.startswith(("STATUS=", "WATCHDOG=1")), message
            assert proc.wait(int(k["TimeoutStopSec"])) == 0
        finally:
            stop_process(proc)
            assert proc.stderr is not None
            errors = proc.stderr.read().decode()
            proc.stderr.close()
    assert "svc-test" in errors  # it logged as the configured agent
