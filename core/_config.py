"""The standalone coordinator's configuration: one frozen value, loaded once at its entry point.

Precedence, as for the agent (:mod:`dagon.agent._config`): command-line flags, then
environment variables, then the TOML file (``dagon coordinator --config FILE``), then
the defaults below. The table of every setting (flag / environment / file key /
default) is ``docs/configuration.md``; this module is the only place that reads the
coordinator's environment variables, ``DAGON_MQTT_PROTOCOL`` included (for clients
of the facade too, through :func:`env_mqtt_protocol`), and the only place that
names the run store's file.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from dagon.core._coordinator import DEFAULT_REQUEUE_GRACE
from dagon.core._retention import DEFAULT_KEEP_FINISHED, DEFAULT_KEEP_FINISHED_TASKS
from dagon.protocol import ConfigError
from dagon.protocol._settings import as_bool, as_float, as_int, as_str, read_toml, truth
from dagon.protocol.transport import MqttAuth

__all__ = [
    "RUN_STORE_FILE",
    "CoordinatorConfig",
    "env_insecure",
    "env_mqtt_login",
    "env_mqtt_protocol",
    "load_coordinator_config",
    "run_store_path",
]

RUN_STORE_FILE: Final = "runs.sqlite"
"""The run store's file name inside a coordinator's home (``$DAGON_HOME``)."""

DEFAULT_MONGO_BUFFER: Final = 100_000


def run_store_path(home: Path) -> Path:
    """Where the coordinator whose home is ``home`` keeps its run store."""
    return home / RUN_STORE_FILE


def env_mqtt_protocol(env: Mapping[str, str]) -> str:
    """``$DAGON_MQTT_PROTOCOL``, else ``"5"`` (validated where a transport is built)."""
    return env.get(_ENV["mqtt_protocol"]) or "5"


def env_insecure(env: Mapping[str, str]) -> bool:
    """Whether ``$DAGON_INSECURE`` is set to 1/true/yes (anything else, or unset: secure)."""
    return env.get(_ENV["insecure"], "").strip().lower() in ("1", "true", "yes")


def env_mqtt_login(env: Mapping[str, str]) -> dict[str, str | None]:
    """The broker TLS files and login of ``$DAGON_MQTT_CA`` …, keyed like :class:`CoordinatorConfig`'s fields."""
    return {key: env.get(_ENV[key]) or None for key in _MQTT_FILES}


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorConfig:
    """Validated settings of ``dagon coordinator`` (build it with :func:`load_coordinator_config`).

    Attributes:
        coordinator_id: the coordinator's name (clients submit to it).
        home: state directory (run store, keys, relay, checkpoints).
        broker: MQTT broker URL (required to serve).
        mqtt_protocol: ``"5"`` or ``"3.1.1"``.
        mqtt_ca, mqtt_cert, mqtt_key, mqtt_username, mqtt_password_file: how to
            authenticate to the broker (see :class:`~dagon.protocol.transport.MqttAuth`).
        mqtt_session_expiry: seconds the broker keeps the session (and queues QoS 1
            reports) while the connection is down.
        heartbeat_ttl: seconds of silence before an agent is lost.
        requeue_grace: seconds the tasks of an agent whose Last Will arrived wait for it.
        keep_finished, keep_finished_tasks: seconds a finished run stays in memory (and its task
            results retained on the broker), and how many tasks of finished runs are kept at most
            (see dagon.core._retention); then ``dagon status`` answers from the run store.
        relay_host, relay_port, relay_url: the data relay's address, port (0: any free
            one) and the URL agents use for it (default ``http://HOST:PORT``).
        relay_tls_cert, relay_tls_key: serve the relay and checkpoint storage over HTTPS.
        enrolled_agents_only: kept for old configurations; agents are always admitted only when enrolled.
        insecure: neither sign nor verify messages (development only).
        metrics_port, metrics_host: Prometheus metrics server (port 0: off).
        wait_for_broker: a broker that does not answer at start is waited for (capped backoff, a
            warning each minute) instead of ending the coordinator with an error.
        mongo_url, mongo_db, mongo_buffer: also write runs, tasks and telemetry to MongoDB.
        ui_port, ui_host, ui_allow_control: the live web dashboard (port None: off; 0: any
            free port), its address, and whether it offers cancel and resume (docs/dashboard.md).
        public_results: publish a retained JSON result per task and the run events (docs/mqtt-topics.md);
            false: only each run's retained status.
    """

    coordinator_id: str = "main"
    home: Path
    broker: str | None = None
    mqtt_protocol: str = "5"
    mqtt_ca: str | None = None
    mqtt_cert: str | None = None
    mqtt_key: str | None = None
    mqtt_username: str | None = None
    mqtt_password_file: str | None = None
    mqtt_session_expiry: int = 3600
    heartbeat_ttl: float = 15.0
    requeue_grace: float = DEFAULT_REQUEUE_GRACE
    keep_finished: float = DEFAULT_KEEP_FINISHED
    keep_finished_tasks: int = DEFAULT_KEEP_FINISHED_TASKS
    relay_host: str = "127.0.0.1"
    relay_port: int = 0
    relay_url: str | None = None
    relay_tls_cert: Path | None = None
    relay_tls_key: Path | None = None
    enrolled_agents_only: bool = False
    insecure: bool = False
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    mongo_url: str | None = None
    mongo_db: str = "dagon"
    mongo_buffer: int = DEFAULT_MONGO_BUFFER
    ui_port: int | None = None
    ui_host: str = "127.0.0.1"
    ui_allow_control: bool = False
    wait_for_broker: bool = True
    public_results: bool = True

    def __post_init__(self) -> None:
        if self.mqtt_protocol not in ("5", "3.1.1"):
            raise ConfigError(f"mqtt_protocol must be '5' or '3.1.1', got {self.mqtt_protocol!r}")
        if self.mqtt_session_expiry < 0:
            raise ConfigError(f"mqtt_session_expiry must be 0 or more seconds, got {self.mqtt_session_expiry}")
        for name in ("heartbeat_ttl", "requeue_grace", "keep_finished", "keep_finished_tasks"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more seconds, got {getattr(self, name)}")
        for name in ("relay_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be a port number (0 to 65535), got {getattr(self, name)}")
        if (self.relay_tls_cert is None) != (self.relay_tls_key is None):
            raise ConfigError("--relay-tls-cert and --relay-tls-key go together: pass both, or neither for plain HTTP")
        if self.ui_port is not None and not 0 <= self.ui_port <= 65535:
            raise ConfigError(f"ui_port must be a port number (0 to 65535: 0 picks a free one), got {self.ui_port}")
        if self.ui_port is None and self.ui_allow_control:
            raise ConfigError("--ui-allow-control needs --ui-port N (the dashboard is off without it)")
        if self.mongo_buffer < 1:
            raise ConfigError(
                f"--mongo-buffer {self.mongo_buffer}: must be at least 1 (documents kept during an outage)"
            )

    @property
    def store_path(self) -> Path:
        """The run store (``<home>/runs.sqlite``)."""
        return run_store_path(self.home)

    @property
    def relay_dir(self) -> Path:
        """Where relayed outputs are kept (checkpoints go next to it)."""
        return self.home / "relay"

    def mqtt_auth(self) -> MqttAuth:
        """The broker credentials (reads the password file).

        Raises:
            ConfigError: a TLS or password file is missing or unreadable.
        """
        return MqttAuth.load(
            ca_file=self.mqtt_ca,
            cert_file=self.mqtt_cert,
            key_file=self.mqtt_key,
            username=self.mqtt_username,
            password_file=self.mqtt_password_file,
        )

    def relay_tls(self) -> ssl.SSLContext | None:
        """The relay's server TLS context, or None for plain HTTP.

        Raises:
            ConfigError: the certificate or key cannot be loaded.
        """
        if self.relay_tls_cert is None or self.relay_tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.relay_tls_cert, self.relay_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the relay certificate {self.relay_tls_cert} with key {self.relay_tls_key}: {exc}"
            ) from None
        return context


# Environment variables of the coordinator, by file key (the other settings have none).
_ENV: Final = {
    "broker": "DAGON_BROKER",
    "home": "DAGON_HOME",
    "mqtt_protocol": "DAGON_MQTT_PROTOCOL",
    "mqtt_ca": "DAGON_MQTT_CA",
    "mqtt_cert": "DAGON_MQTT_CERT",
    "mqtt_key": "DAGON_MQTT_KEY",
    "mqtt_username": "DAGON_MQTT_USERNAME",
    "mqtt_password_file": "DAGON_MQTT_PASSWORD_FILE",
    "mqtt_session_expiry": "DAGON_MQTT_SESSION_EXPIRY",
    "insecure": "DAGON_INSECURE",
    "mongo_url": "DAGON_MONGO_URL",
    "mongo_db": "DAGON_MONGO_DB",
    "mongo_buffer": "DAGON_MONGO_BUFFER",
    "ui_port": "DAGON_UI_PORT",
    "ui_host": "DAGON_UI_HOST",
    "wait_for_broker": "DAGON_WAIT_FOR_BROKER",
    "public_results": "DAGON_PUBLIC_RESULTS",
}
_MQTT_FILES: Final = ("mqtt_ca", "mqtt_cert", "mqtt_key", "mqtt_username", "mqtt_password_file")
_FILE_KEYS: Final = {f.name for f in fields(CoordinatorConfig)} - {"coordinator_id"} | {"id"}


def load_coordinator_config(
    *, config_file: Path | None, env: Mapping[str, str], flags: Mapping[str, Any], default_home: Path
) -> CoordinatorConfig:
    """Merge the sources: flags win, then environment variables, then the TOML file, then defaults.

    Args:
        config_file: optional TOML file (keys: the field names, ``id`` for the coordinator id).
        env: environment variables (usually ``os.environ``).
        flags: command-line values keyed by file key; ``None`` means "not given".
        default_home: the home when neither flag, ``DAGON_HOME`` nor file sets one (the
            facade passes the rule it shares with the agent; ``dagon.core`` never imports
            ``dagon.agent``).

    Raises:
        ConfigError: a value is malformed or out of range (the message says which and where).
    """
    file_values = _read_file(config_file) if config_file is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}

    def pick(key: str) -> tuple[Any, str]:
        """The value of ``key`` and where it came from (for error messages)."""
        if key in given:
            return given[key], "--" + key.replace("_", "-")
        env_name = _ENV.get(key)
        if env_name and env.get(env_name):
            return env[env_name], env_name
        return file_values.get(key), f"{config_file}: {key}"

    if ("mongo_db" in given or "mongo_buffer" in given) and pick("mongo_url")[0] is None:
        raise ConfigError("--mongo-db and --mongo-buffer need --mongo-url (or DAGON_MONGO_URL)")
    kwargs: dict[str, Any] = {}
    home, _ = pick("home")
    kwargs["home"] = Path(as_str(home, "home")).expanduser() if home is not None else default_home
    if (value := pick("id")[0]) is not None:
        kwargs["coordinator_id"] = as_str(value, "id")
    for key in ("broker", "mqtt_protocol", "mqtt_ca", "mqtt_cert", "mqtt_key", "mqtt_username",
                "mqtt_password_file", "relay_host", "relay_url", "metrics_host", "mongo_url", "mongo_db",
                "ui_host"):  # fmt: skip
        if (value := pick(key)[0]) is not None:
            kwargs[key] = as_str(value, key)
    value, where = pick("mqtt_protocol")
    if value is not None and value not in ("5", "3.1.1"):
        raise ConfigError(f"{where} must be '5' or '3.1.1', got {value!r}")
    for key in ("relay_tls_cert", "relay_tls_key"):
        if (value := pick(key)[0]) is not None:
            kwargs[key] = Path(as_str(value, key)).expanduser()
    for key in ("heartbeat_ttl", "requeue_grace", "keep_finished"):
        value, where = pick(key)
        if value is not None:
            kwargs[key] = as_float(value, where, unit="seconds")
    for key in ("relay_port", "metrics_port", "ui_port", "keep_finished_tasks"):
        value, where = pick(key)
        if value is not None:
            kwargs[key] = as_int(value, where)
    value, where = pick("mqtt_session_expiry")
    if value is not None:
        if not str(value).isdigit():
            raise ConfigError(f"{where} must be a whole number of seconds, got {value!r}")
        kwargs["mqtt_session_expiry"] = int(value)
    value, where = pick("mongo_buffer")
    if value is not None and "mongo_url" in kwargs:  # without a sink the buffer is not used (nor read)
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: expected a number of documents")
        try:
            kwargs["mongo_buffer"] = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r}: expected a number of documents") from None
    value, where = pick("insecure")
    if where == "DAGON_INSECURE":
        kwargs["insecure"] = env_insecure(env)
    elif value is not None:
        kwargs["insecure"] = as_bool(value, where)
    if (value := pick("enrolled_agents_only")[0]) is not None:
        kwargs["enrolled_agents_only"] = as_bool(value, "enrolled_agents_only")
    if (value := pick("ui_allow_control")[0]) is not None:
        kwargs["ui_allow_control"] = as_bool(value, "ui_allow_control")
    for key in ("wait_for_broker", "public_results"):
        value, where = pick(key)
        if value is not None:
            kwargs[key] = as_bool(truth(value), where)
    return CoordinatorConfig(**kwargs)


def _read_file(config_file: Path) -> dict[str, Any]:
    return read_toml(config_file, _FILE_KEYS)
