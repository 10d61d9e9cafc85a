"""Agent configuration: flags > environment > TOML file > defaults, validated once.

| setting | flag | environment | TOML key | default |
|---|---|---|---|---|
| broker | ``--broker`` | ``DAGON_BROKER`` | ``broker`` | none (required by ``dagon-agent``) |
| agent id | ``--id`` | ``DAGON_AGENT_ID`` | ``id`` | stable id kept in ``<home>/agent-id`` |
| scratch root | ``--scratch`` | ``DAGON_SCRATCH`` | ``scratch`` | ``<home>/scratch`` |
| labels | ``--labels k=v,…`` | ``DAGON_LABELS`` | ``labels`` (table) | none |
| slots | ``--slots`` | ``DAGON_SLOTS`` | ``slots`` | CPU count |
| home | — | ``DAGON_HOME`` | ``home`` | ``$XDG_STATE_HOME/dagon`` or ``~/.local/state/dagon`` |
| MQTT version | — | ``DAGON_MQTT_PROTOCOL`` | ``mqtt_protocol`` | ``"5"`` (``"3.1.1"`` for amqtt) |

Further TOML-only keys: ``prefetch`` (assignments queued beyond the slots so a
slot never idles waiting for the coordinator; default: as many as slots),
``stage_mode`` (hardlink, symlink, copy; hardlink falls back to copy across
file systems), ``heartbeat_interval`` (seconds), ``python_pool`` (thread,
process), ``python_workers`` (default: as many as slots), ``max_message_size``
(bytes).

Telemetry keys (TOML; some also as environment variables): ``telemetry_interval``
(``DAGON_TELEMETRY_INTERVAL``, seconds, 0 = off, default 5), ``power_source``
(``DAGON_POWER_SOURCE``: auto, rapl, hwmon, pmic, mqtt, prometheus, model, off),
``power_idle_watts`` / ``power_max_watts`` (CPU model), ``power_mqtt_topic``,
``power_prometheus_url`` / ``power_prometheus_query``, ``metrics_port``
(``DAGON_METRICS_PORT``, ``--metrics-port``) and ``metrics_host``
(``DAGON_METRICS_HOST``, ``--metrics-host``, default 127.0.0.1).
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

from dagon.protocol import DEFAULT_MAX_SIZE, NAME_RE, ConfigError

__all__ = ["AgentConfig", "StageMode", "default_home", "load_agent_config", "parse_labels", "stable_agent_id"]

StageMode = Literal["hardlink", "symlink", "copy"]
PythonPool = Literal["thread", "process"]
MqttProtocol = Literal["5", "3.1.1"]

STAGE_MODES: Final[tuple[str, ...]] = ("hardlink", "symlink", "copy")
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _cpus() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Validated agent settings (build it with :func:`load_agent_config`).

    Attributes:
        agent_id: unique name of the agent (letters, digits, ``.``, ``_``, ``-``).
        home: state directory (stable agent id, default scratch).
        scratch: root of the task working directories.
        broker: MQTT broker URL, ``None`` when not configured.
        labels: placement labels announced to coordinators.
        slots: tasks run at the same time.
        prefetch: assignments accepted beyond ``slots`` and queued (-1: as many as slots).
        stage_mode: how local inputs are staged (an assignment may override it).
        heartbeat_interval: seconds between two heartbeats.
        python_pool: ``"thread"`` or ``"process"`` workers for the python runtime.
        python_workers: size of that pool (0: as many as slots).
        mqtt_protocol: ``"5"`` or ``"3.1.1"``.
        max_message_size: largest message accepted or sent, in bytes.
    """

    agent_id: str
    home: Path
    scratch: Path
    broker: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    slots: int = field(default_factory=_cpus)
    prefetch: int = -1
    stage_mode: StageMode = "hardlink"
    heartbeat_interval: float = 5.0
    python_pool: PythonPool = "thread"
    python_workers: int = 0
    mqtt_protocol: MqttProtocol = "5"
    max_message_size: int = DEFAULT_MAX_SIZE
    telemetry_interval: float = 5.0  # seconds between telemetry samples; 0 turns telemetry off
    power_source: str = "auto"  # see dagon.agent.power.POWER_SOURCES
    power_idle_watts: float = 5.0  # CPU model: power when idle
    power_max_watts: float = 15.0  # CPU model: power with every core busy
    power_mqtt_topic: str = ""  # external meter (Tasmota/Shelly JSON) on the agent's broker
    power_prometheus_url: str = ""
    power_prometheus_query: str = ""
    metrics_port: int = 0  # Prometheus exporter port; 0 = no exporter
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        _check_telemetry(self)
        if not _ID_RE.fullmatch(self.agent_id):
            raise ConfigError(
                f"agent id {self.agent_id!r} is not valid: use letters, digits, '.', '_' or '-' (max 100),"
                " starting with a letter or digit"
            )
        if self.slots < 1:
            raise ConfigError(f"slots must be at least 1, got {self.slots}")
        if self.prefetch < -1:
            raise ConfigError(f"prefetch must be 0 or more (-1: as many as slots), got {self.prefetch}")
        if self.stage_mode not in STAGE_MODES:
            raise ConfigError(f"stage_mode must be one of {', '.join(STAGE_MODES)}, got {self.stage_mode!r}")
        if self.python_pool not in ("thread", "process"):
            raise ConfigError(f"python_pool must be 'thread' or 'process', got {self.python_pool!r}")
        if self.python_workers < 0:
            raise ConfigError(f"python_workers must be 0 (as many as slots) or more, got {self.python_workers}")
        if not self.heartbeat_interval > 0:
            raise ConfigError(f"heartbeat_interval must be a positive number of seconds, got {self.heartbeat_interval}")
        if self.mqtt_protocol not in ("5", "3.1.1"):
            raise ConfigError(f"mqtt_protocol must be '5' or '3.1.1', got {self.mqtt_protocol!r}")
        if self.max_message_size < 1024:
            raise ConfigError(f"max_message_size must be at least 1024 bytes, got {self.max_message_size}")
        for key, value in self.labels.items():
            if not NAME_RE.fullmatch(key) or "=" in key or "," in key:
                raise ConfigError(f"label name {key!r} is not valid: use letters, digits and '-', '_', '.'")
            if "," in value:
                raise ConfigError(f"label {key}={value!r}: a value cannot contain ','")

    @property
    def queue_depth(self) -> int:
        """Assignments accepted beyond the slots (waiting for a free slot)."""
        return self.slots if self.prefetch < 0 else self.prefetch

    @property
    def workers(self) -> int:
        """Size of the python runtime's worker pool."""
        return self.python_workers or self.slots


def _check_telemetry(c: AgentConfig) -> None:
    if not c.telemetry_interval >= 0:
        raise ConfigError(f"telemetry_interval must be 0 (off) or a number of seconds, got {c.telemetry_interval}")
    if not 0 <= c.power_idle_watts <= c.power_max_watts:
        raise ConfigError(
            f"need 0 <= power_idle_watts <= power_max_watts, got {c.power_idle_watts} and {c.power_max_watts}"
        )
    if not 0 <= c.metrics_port <= 65535:
        raise ConfigError(f"metrics_port must be 0 (off) or a TCP port, got {c.metrics_port}")


def parse_labels(text: str) -> dict[str, str]:
    """Parse ``"site=lab,arch=arm"`` into ``{"site": "lab", "arch": "arm"}``.

    Raises:
        ConfigError: an item is not ``key=value``.
    """
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"label {item!r} is not key=value (write e.g. --labels site=lab,gpu=no)")
        labels[key.strip()] = value.strip()
    return labels


def default_home(env: Mapping[str, str]) -> Path:
    """``$DAGON_HOME``, else ``$XDG_STATE_HOME/dagon``, else ``~/.local/state/dagon``."""
    if env.get("DAGON_HOME"):
        return Path(env["DAGON_HOME"]).expanduser()
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "dagon"


def stable_agent_id(home: Path) -> str:
    """Return the id kept in ``<home>/agent-id``, creating ``<hostname>-<6 hex>`` on first use.

    Raises:
        ConfigError: the file cannot be read or written, or holds an invalid id.
    """
    path = home / "agent-id"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    except OSError as exc:
        raise ConfigError(f"cannot read the agent id from {path}: {exc}; fix it or pass --id") from exc
    if existing:
        if not _ID_RE.fullmatch(existing):
            raise ConfigError(f"{path} holds an invalid agent id {existing!r}: delete the file or pass --id")
        return existing
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:60] or "agent"
    new = f"{host}-{os.urandom(3).hex()}"
    try:
        home.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".agent-id.{os.getpid()}.tmp")
        tmp.write_text(new + "\n")
        tmp.replace(path)  # atomic: a crash never leaves a half-written id
    except OSError as exc:
        raise ConfigError(f"cannot store the agent id in {path}: {exc}; set DAGON_HOME or pass --id") from exc
    return new


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, got {value!r}") from None


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {value!r}")
    return value


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return parse_labels(value)
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    raise ConfigError(f"labels must be 'k=v,…' or a TOML table, got {value!r}")


def _read_file(config_file: Path) -> dict[str, Any]:
    try:
        values = tomllib.loads(Path(config_file).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {config_file} does not exist (check --config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {config_file} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
    known = {f.name for f in fields(AgentConfig)} - {"agent_id"} | {"id"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"config file {config_file}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return values


def load_agent_config(*, config_file: Path | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> AgentConfig:
    """Merge the sources: flags win, then environment variables, then the TOML file, then defaults.

    Args:
        config_file: optional TOML file (keys as in the module docstring).
        env: environment variables (usually ``os.environ``).
        flags: command-line values keyed by TOML name (``id``, ``broker``, ``slots``, …);
            ``None`` means "not given".

    Returns:
        The validated configuration; without a configured id, the stable id of ``home``.

    Raises:
        ConfigError: a value is missing, malformed or out of range (the message says which).
    """
    file_values = _read_file(config_file) if config_file is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}

    def pick(key: str, env_name: str | None = None) -> Any:
        if key in given:
            return given[key]
        if env_name and env.get(env_name):
            return env[env_name]
        return file_values.get(key)

    home_value = pick("home", "DAGON_HOME")
    home = Path(_str(home_value, "home")).expanduser() if home_value is not None else default_home(env)
    agent_id = pick("id", "DAGON_AGENT_ID")
    scratch = pick("scratch", "DAGON_SCRATCH")
    broker = pick("broker", "DAGON_BROKER")
    kwargs: dict[str, Any] = {
        "agent_id": _str(agent_id, "agent id") if agent_id is not None else stable_agent_id(home),
        "home": home,
        "scratch": Path(_str(scratch, "scratch")).expanduser() if scratch is not None else home / "scratch",
        "broker": _str(broker, "broker") if broker is not None else None,
        "labels": _labels(pick("labels", "DAGON_LABELS")),
    }
    for key, env_name in (("slots", "DAGON_SLOTS"), ("python_workers", None), ("max_message_size", None)):
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = _int(value, key)
    if (value := pick("prefetch")) is not None:
        kwargs["prefetch"] = _int(value, "prefetch")
    for key, env_name in (("stage_mode", None), ("python_pool", None), ("mqtt_protocol", "DAGON_MQTT_PROTOCOL")):
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = _str(value, key)
    if (value := pick("heartbeat_interval")) is not None:
        kwargs["heartbeat_interval"] = _float(value, "heartbeat_interval")
    _load_telemetry(kwargs, pick)
    return AgentConfig(**kwargs)


def _load_telemetry(kwargs: dict[str, Any], pick: Any) -> None:
    for key, env_name in (("telemetry_interval", "DAGON_TELEMETRY_INTERVAL"), ("power_idle_watts", None),
                          ("power_max_watts", None)):  # fmt: skip
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = _float(value, key)
    if (value := pick("metrics_port", "DAGON_METRICS_PORT")) is not None:
        kwargs["metrics_port"] = _int(value, "metrics_port")
    for key, env_name in (("power_source", "DAGON_POWER_SOURCE"), ("power_mqtt_topic", None),
                          ("power_prometheus_url", None), ("power_prometheus_query", None),
                          ("metrics_host", "DAGON_METRICS_HOST")):  # fmt: skip
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = _str(value, key)
