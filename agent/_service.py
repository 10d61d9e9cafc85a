"""``dagon-agent`` as a systemd service: the unit, and installing or removing it.

The unit is built for a device next to its sensors (a Raspberry Pi by the bench):

* ``Type=notify`` — started means connected to the broker and announced (the agent sends
  ``READY=1``, see :mod:`dagon.agent._sdnotify`); ``WatchdogSec=`` restarts an agent whose
  event loop stalls; ``Restart=on-failure`` with ``StartLimitIntervalSec=0`` never gives up (the
  agent itself waits for a broker that is down at boot, with capped backoff); systemd ≥ 254 gets
  restart backoff (``RestartSteps=``), older ones (252 on Debian 12 / Raspberry Pi OS) a fixed
  ``RestartSec=30``;
* ``KillMode=control-group`` — tasks die with the agent, never orphaned;
* a dedicated system user with only the device groups that exist here (``dialout`` for
  serial ports, ``gpio``, ``i2c``, ``spi``, ``video``; ``docker`` only when asked, as it is
  root-equivalent);
* ``StateDirectory=dagon`` (keys, agent id, spool, default scratch in ``/var/lib/dagon``) and
  hardening: ``NoNewPrivileges``, ``ProtectSystem=strict`` with only the state and scratch
  directories writable, ``PrivateTmp``, ``ProtectHome``, kernel and cgroup protection, no
  capabilities. ``PrivateDevices`` and ``ProtectClock`` are deliberately absent: both would
  hide the serial, I²C and IIO devices the agent exists to read;
* configuration from a TOML file plus an optional ``EnvironmentFile``;
* ``After=network-online.target`` (the agent still retries its broker by itself).

Unit files are text with their own escaping: ``%`` specifiers and ``$`` expansion are
escaped in every value written here, so a path cannot smuggle in a specifier.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dagon.protocol import ConfigError
from dagon.protocol._version import __version__

__all__ = [
    "DEFAULT_GROUPS",
    "ServiceSpec",
    "agent_command",
    "install_service",
    "render_unit",
    "systemd_version",
    "uninstall_service",
]

HEADER: Final = "Written by `dagon-agent service install`"
DEFAULT_GROUPS: Final = ("dialout", "gpio", "i2c", "spi", "video")
STATE_ROOT: Final = Path("/var/lib")
FIXED_RESTART_DELAY: Final = 30  # seconds between restarts where systemd has no restart backoff (< 254)
_UNIT_NAME_RE: Final = re.compile(r"[A-Za-z0-9:_.\\-]+")
_USER_RE: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _escape(value: str) -> str:
    """A value as systemd reads it literally: ``%`` specifiers and ``$`` expansion escaped."""
    return value.replace("%", "%%").replace("$", "$$")


def _word(value: str) -> str:
    """One command-line word (quoted when it holds blanks, quotes or backslashes)."""
    value = _escape(value)
    if value and not re.search(r"[\s\"'\\;]", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path(value: Path) -> str:
    text = str(value)
    if not value.is_absolute() or "\n" in text:
        raise ConfigError(f"{text!r} must be an absolute path on one line")
    return _escape(text)


def agent_command() -> list[str]:
    """How systemd starts this installation's agent: its ``dagon-agent`` script, else ``python -m``."""
    script = Path(sys.executable).parent / "dagon-agent"  # a venv's bin/: never resolve its symlinks
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("dagon-agent")
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-c", "import sys; from dagon.cli import agent_main; sys.exit(agent_main())"]


def systemd_version() -> int:
    """The systemd version installed here (0 when no systemd tool answers)."""
    for tool in ("systemctl", "systemd-analyze"):
        path = shutil.which(tool)
        if path is None:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.match(r"systemd (\d+)", out)
        if match:
            return int(match.group(1))
    return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """What the unit says.

    Attributes:
        name: unit name without ``.service``.
        user: the system user the agent runs as (created by :func:`install_service` when absent).
        config: the agent's TOML configuration file.
        env_file: optional ``KEY=value`` file (``DAGON_BROKER=…``, secrets) read by systemd.
        scratch: the scratch root; default ``/var/lib/<state>/scratch``.
        state: the ``StateDirectory=`` name (``/var/lib/<state>`` is the agent's home).
        groups: supplementary groups wanted; those missing on this machine are left out (named in a comment).
        docker: also join ``docker`` (root-equivalent: anyone who runs tasks here then owns the machine).
        watchdog: ``WatchdogSec=`` in seconds (0: no watchdog).
        command: the agent's command line (default :func:`agent_command`).
        systemd: the systemd version the unit is for (254 and later get restart backoff).
    """

    name: str = "dagon-agent"
    user: str = "dagon"
    config: Path = Path("/etc/dagon/agent.toml")
    env_file: Path = Path("/etc/dagon/agent.env")
    scratch: Path | None = None
    state: str = "dagon"
    groups: tuple[str, ...] = DEFAULT_GROUPS
    docker: bool = False
    watchdog: int = 30
    command: tuple[str, ...] = field(default_factory=lambda: tuple(agent_command()))
    systemd: int = 252

    def __post_init__(self) -> None:
        if not _UNIT_NAME_RE.fullmatch(self.name):
            raise ConfigError(f"unit name {self.name!r}: use letters, digits and ':_.-'")
        if not _USER_RE.fullmatch(self.user):
            raise ConfigError(f"user {self.user!r} is not a valid system user name (lower case, digits, '_', '-')")
        if self.user in ("root", "nobody"):
            raise ConfigError(f"user {self.user!r}: the agent runs as a dedicated user (the default, dagon)")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.state):
            raise ConfigError(f"state directory name {self.state!r}: lower case letters, digits, '.', '_', '-'")
        if not 0 <= self.watchdog <= 3600:
            raise ConfigError(f"watchdog must be 0 (off) to 3600 seconds, got {self.watchdog}")
        for group in self.groups:
            if not _USER_RE.fullmatch(group):
                raise ConfigError(f"group {group!r} is not a valid group name")
        for p in (self.config, self.env_file, *([self.scratch] if self.scratch else [])):
            _path(p)

    @property
    def home(self) -> Path:
        return STATE_ROOT / self.state

    @property
    def scratch_root(self) -> Path:
        return self.scratch or self.home / "scratch"

    def wanted_groups(self) -> list[str]:
        return list(dict.fromkeys([*self.groups, *(["docker"] if self.docker else [])]))


def _existing_groups(names: Sequence[str]) -> tuple[list[str], list[str]]:
    present, absent = [], []
    for name in names:
        try:
            grp.getgrnam(name)
            present.append(name)
        except KeyError:
            absent.append(name)
    return present, absent


def _primary_group(user: str) -> str:
    """The user's primary group; for a user not created yet, its namesake (``useradd --user-group``)."""
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def render_unit(spec: ServiceSpec) -> str:
    """The unit file's text."""
    groups, absent = _existing_groups(spec.wanted_groups())
    command = " ".join(_word(w) for w in (*spec.command, "--config", str(spec.config)))
    homes = (Path("/home"), Path("/root"))
    needs_home = any(_under(Path(p), h) for h in homes for p in (spec.command[0], spec.config, spec.scratch_root))
    lines = [
        f"# {HEADER} (dagon {__version__}); `dagon-agent service uninstall` removes it.",
        "# Local changes belong in a drop-in: systemctl edit " + spec.name,
        "[Unit]",
        "Description=dagon agent: runs workflow tasks and reads sensors on this device",
        "Wants=network-online.target",
        "After=network-online.target time-sync.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        f"EnvironmentFile=-{_path(spec.env_file)}",
        f"Environment=DAGON_HOME={_path(spec.home)}",
        f"Environment=DAGON_SCRATCH={_path(spec.scratch_root)}",
        "Environment=PYTHONUNBUFFERED=1",
        f"User={spec.user}",
        f"Group={_primary_group(spec.user)}",
    ]
    if groups:
        lines.append("SupplementaryGroups=" + " ".join(groups))
    if absent:
        lines.append("# groups not on this machine (left out): " + " ".join(absent))
    if spec.docker:
        lines.append("# docker group: root-equivalent; whoever may submit tasks here controls this machine")
    lines += [
        f"StateDirectory={spec.state}",
        "StateDirectoryMode=0750",
        "UMask=0027",
    ]
    if spec.watchdog:
        lines.append(f"WatchdogSec={spec.watchdog}")
    # The agent waits for its broker by itself (capped backoff), so a restart means it crashed or
    # stalled. systemd >= 254 backs off between restarts (5 s growing to 5 min); older ones (Debian 12,
    # Raspberry Pi OS Bookworm: 252) warn on those keys and have only a fixed delay: 30 s, so a crash
    # loop costs at most two starts a minute. Never giving up (StartLimitIntervalSec=0 above) suits a
    # device nobody is watching: it recovers by itself once what made it crash is gone.
    lines.append("Restart=on-failure")
    if spec.systemd >= 254:
        lines += ["RestartSec=5", "RestartSteps=8", "RestartMaxDelaySec=300"]
    else:
        lines.append(f"RestartSec={FIXED_RESTART_DELAY}")
    lines += [
        "TimeoutStartSec=120",
        "TimeoutStopSec=30",
        "KillMode=control-group",
        "KillSignal=SIGTERM",
        "LimitNOFILE=65536",
        "# hardening (devices stay visible: PrivateDevices/ProtectClock would hide the sensors)",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ]
    if not _under(spec.scratch_root, spec.home):
        lines.append(f"ReadWritePaths={_path(spec.scratch_root)}")
    lines += [
        "PrivateTmp=yes",
        f"ProtectHome={'read-only' if needs_home else 'yes'}",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


CONFIG_TEMPLATE: Final = """\
# dagon agent configuration (keys: docs/device.md and `dagon-agent --help`).
# Settings given in {env_file} (DAGON_BROKER=…) override these.
{broker_line}
home = "{home}"          # keys, agent id, result spool (the unit's StateDirectory)
scratch = "{scratch}"
# labels = {{ site = "edge" }}
# telemetry_interval = 5
# power_source = "auto"
"""


@dataclass(frozen=True, slots=True)
class Installed:
    """What :func:`install_service` did, for the message to the user."""

    unit: Path
    created: tuple[str, ...]
    next_steps: tuple[str, ...]


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} is not installed; it is needed to {' '.join(argv)}") from None
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"{' '.join(argv)} failed: {exc.stderr.strip() or exc.returncode}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{' '.join(argv)} did not finish within 60 s") from None


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()  # sd_booted(3)


def install_service(spec: ServiceSpec, *, unit_dir: Path, broker: str | None = None) -> Installed:
    """Write the unit (and a starter config when none exists), create the user and directories.

    Raises:
        ConfigError: not root, or a step failed (the message names it).
    """
    from dagon.agent._config import _read_file  # validates an existing configuration's keys

    if os.geteuid() != 0:
        raise ConfigError("installing a system service needs root: run it with sudo (or use --print)")
    created: list[str] = []
    try:
        pwd.getpwnam(spec.user)
    except KeyError:
        _run(["useradd", "--system", "--home-dir", str(spec.home), "--no-create-home",
              "--shell", "/usr/sbin/nologin", "--user-group", spec.user])  # fmt: skip
        created.append(f"user {spec.user}")
    if spec.config.exists():
        _read_file(spec.config)  # a typo is reported now, not at the first start
    else:
        spec.config.parent.mkdir(parents=True, exist_ok=True)
        broker_line = f'broker = "{broker}"' if broker else '# broker = "mqtts://broker.example:8883"'
        spec.config.write_text(
            CONFIG_TEMPLATE.format(
                env_file=spec.env_file, broker_line=broker_line, home=spec.home, scratch=spec.scratch_root
            )
        )
        spec.config.chmod(0o644)
        created.append(f"config {spec.config}")
    entry = pwd.getpwnam(spec.user)
    # systemd creates the StateDirectory at the first start; enrolling comes before that.
    if not spec.home.exists():
        spec.home.mkdir(parents=True, mode=0o750)
        os.chown(spec.home, entry.pw_uid, entry.pw_gid)
        created.append(f"state directory {spec.home}")
    if not _under(spec.scratch_root, spec.home):
        spec.scratch_root.mkdir(parents=True, exist_ok=True)
        os.chown(spec.scratch_root, entry.pw_uid, entry.pw_gid)
        spec.scratch_root.chmod(0o750)
        created.append(f"scratch {spec.scratch_root}")
    unit_dir.mkdir(parents=True, exist_ok=True)
    unit = unit_dir / f"{spec.name}.service"
    tmp = unit.with_name(f".{unit.name}.tmp")
    tmp.write_text(render_unit(spec))
    tmp.chmod(0o644)
    tmp.replace(unit)
    created.append(f"unit {unit}")
    steps = [
        f"enroll the coordinator's key: sudo -u {spec.user} DAGON_HOME={spec.home} {spec.command[0]} enroll"
        " /path/to/coordinator.pub",
    ]
    if not broker:
        steps.append(f"set the broker in {spec.config} (or DAGON_BROKER= in {spec.env_file})")
    if _systemd_running():
        _run(["systemctl", "daemon-reload"])
        steps.append(f"sudo systemctl enable --now {spec.name}")
    else:
        steps.append(f"systemd is not running here: on the device, run systemctl daemon-reload and enable {spec.name}")
    steps.append(
        f"check it: sudo -u {spec.user} {spec.command[0]} doctor --config {spec.config}; systemctl status {spec.name}"
    )
    return Installed(unit=unit, created=tuple(created), next_steps=tuple(steps))


def uninstall_service(name: str, *, unit_dir: Path) -> Path | None:
    """Stop, disable and remove the unit; the user, configuration and state stay (say how to remove them).

    Returns:
        The removed unit file, or None when there was none.
    """
    if not _UNIT_NAME_RE.fullmatch(name):
        raise ConfigError(f"unit name {name!r}: use letters, digits and ':_.-'")
    unit = unit_dir / f"{name}.service"
    if not unit.exists():
        return None
    if HEADER not in unit.read_text(errors="replace"):
        raise ConfigError(f"{unit} was not written by `dagon-agent service install`: not removing it")
    if os.geteuid() != 0:
        raise ConfigError("removing a system service needs root: run it with sudo")
    if _systemd_running():
        _run(["systemctl", "disable", "--now", f"{name}.service"])
    unit.unlink()
    if _systemd_running():
        _run(["systemctl", "daemon-reload"])
    return unit
