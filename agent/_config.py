"""Agent configuration: flags > environment > TOML file > defaults, validated once.

| setting | flag | environment | TOML key | default |
|---|---|---|---|---|
| broker | ``--broker`` | ``DAGON_BROKER`` | ``broker`` | none (required by ``dagon-agent``) |
| agent id | ``--id`` | ``DAGON_AGENT_ID`` | ``id`` | stable id kept in ``<home>/agent-id`` |
| scratch root | ``--scratch`` | ``DAGON_SCRATCH`` | ``scratch`` | ``<home>/scratch`` |
| labels | ``--labels k=v,…`` | ``DAGON_LABELS`` | ``labels`` (table) | none |
| slots | ``--slots`` | ``DAGON_SLOTS`` | ``slots`` | CPU count |
| home | — | ``DAGON_HOME`` | — | ``$XDG_STATE_HOME/dagon`` or ``~/.local/state/dagon`` |
| MQTT version | — | ``DAGON_MQTT_PROTOCOL`` | ``mqtt_protocol`` | ``"5"`` (``"3.1.1"`` for amqtt) |

Further TOML-only keys: ``prefetch`` (assignments queued beyond the slots so a
slot never idles waiting for the coordinator; default: as many as slots),
``stage_mode`` (hardlink, symlink, copy), ``heartbeat_interval``,
``python_pool`` (thread, process), ``python_workers``,
``max_message_size``.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dagon.protocol import DEFAULT_MAX_SIZE, NAME_RE, ConfigError

__all__ = ["AgentConfig", "load_agent_config", "parse_labels", "stable_agent_id"]

_STAGE_MODES: Final = ("hardlink", "symlink", "copy")
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    agent_id: str
    home: Path
    scratch: Path
    broker: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    prefetch: int = -1  # -1: as many as slots
    stage_mode: str = "hardlink"
    heartbeat_interval: float = 5.0
    python_pool: str = "thread"
    python_workers: int = 0  # 0: as many as slots
    mqtt_protocol: str = "5"
    max_message_size: int = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        if not _ID_RE.fullmatch(self.agent_id):
            raise ConfigError(
                f"agent id {self.agent_id!r} is not valid: use letters, digits, '.', '_' or '-' (max 100)"
            )
        if self.slots < 1:
            raise ConfigError(f"slots must be at least 1, got {self.slots}")
        if self.stage_mode not in _STAGE_MODES:
            raise ConfigError(f"stage_mode must be one of {', '.join(_STAGE_MODES)}, got {self.stage_mode!r}")
        if self.python_pool not in ("thread", "process"):
            raise ConfigError(f"python_pool must be 'thread' or 'process', got {self.python_pool!r}")
        if self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval must be positive")
        if self.mqtt_protocol not in ("5", "3.1.1"):
            raise ConfigError(f"mqtt_protocol must be '5' or '3.1.1', got {self.mqtt_protocol!r}")
        for key in self.labels:
            if not NAME_RE.fullmatch(key) or "=" in key or "," in key:
                raise ConfigError(f"label name {key!r} is not valid")

    @property
    def queue_depth(self) -> int:
        return self.slots if self.prefetch < 0 else self.prefetch

    @property
    def workers(self) -> int:
        return self.python_workers or self.slots


def parse_labels(text: str) -> dict[str, str]:
    """``"site=lab,arch=arm"`` → ``{"site": "lab", "arch": "arm"}``."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"label {item!r} is not key=value (write e.g. --labels site=lab,gpu=no)")
        labels[key.strip()] = value.strip()
    return labels


def default_home(env: Mapping[str, str]) -> Path:
    if env.get("DAGON_HOME"):
        return Path(env["DAGON_HOME"]).expanduser()
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dagon"


def stable_agent_id(home: Path) -> str:
    """The id kept in ``<home>/agent-id``, created on first use."""
    path = home / "agent-id"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60] or "agent"
    new = f"{host}-{os.urandom(3).hex()}"
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    tmp.replace(path)
    return new


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, got {value!r}") from None


def load_agent_config(*, config_file: Path | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> AgentConfig:
    """Merge the sources (flags win, then environment, then the TOML file)."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
    flags = {k: v for k, v in flags.items() if v is not None}

    def pick(key: str, env_name: str | None = None) -> Any:
        if key in flags:
            return flags[key]
        if env_name and env.get(env_name):
            return env[env_name]
        return file_values.get(key)

    home = default_home(env)
    labels_value = pick("labels", "DAGON_LABELS")
    if isinstance(labels_value, str):
        labels = parse_labels(labels_value)
    elif isinstance(labels_value, Mapping):
        labels = {str(k): str(v) for k, v in labels_value.items()}
    else:
        labels = {}
    agent_id = pick("id", "DAGON_AGENT_ID") or stable_agent_id(home)
    scratch = pick("scratch", "DAGON_SCRATCH")
    kwargs: dict[str, Any] = {
        "agent_id": str(agent_id),
        "home": home,
        "scratch": Path(scratch).expanduser() if scratch else home / "scratch",
        "broker": pick("broker", "DAGON_BROKER"),
        "labels": labels,
    }
    slots = pick("slots", "DAGON_SLOTS")
    if slots is not None:
        kwargs["slots"] = _int(slots, "slots")
    for key in ("stage_mode", "python_pool"):
        if pick(key) is not None:
            kwargs[key] = str(pick(key))
    if pick("mqtt_protocol", "DAGON_MQTT_PROTOCOL") is not None:
        kwargs["mqtt_protocol"] = str(pick("mqtt_protocol", "DAGON_MQTT_PROTOCOL"))
    for key in ("python_workers", "max_message_size", "prefetch"):
        if pick(key) is not None:
            kwargs[key] = _int(pick(key), key)
    if pick("heartbeat_interval") is not None:
        kwargs["heartbeat_interval"] = float(pick("heartbeat_interval"))
    unknown = sorted(set(file_values) - set(AgentConfig.__dataclass_fields__) - {"id"})
    if unknown:
        raise ConfigError(f"config file {config_file}: unknown setting(s) {unknown}")
    return AgentConfig(**kwargs)
