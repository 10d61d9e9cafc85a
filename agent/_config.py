"""Agent configuration: flags > environment > TOML file > defaults, validated once.

| setting | flag | environment | TOML key | default |
|---|---|---|---|---|
| broker | ``--broker`` | ``DAGON_BROKER`` | ``broker`` | none (required by ``dagon-agent``) |
| agent id | ``--id`` | ``DAGON_AGENT_ID`` | ``id`` | stable id kept in ``<home>/agent-id`` |
| scratch root | ``--scratch`` | ``DAGON_SCRATCH`` | ``scratch`` | ``<home>/scratch`` |
| task directory names | — | ``DAGON_SCRATCH_LAYOUT`` | ``scratch_layout`` | ``run`` (or ``dagonstar``) |
| labels | ``--labels k=v,…`` | ``DAGON_LABELS`` | ``labels`` (table) | none |
| more host addresses | ``--addresses a,b`` | ``DAGON_ADDRESSES`` | ``addresses`` (list) | interfaces' only |
| slots | ``--slots`` | ``DAGON_SLOTS`` | ``slots`` | CPU count |
| home | — | ``DAGON_HOME`` | ``home`` | ``$XDG_STATE_HOME/dagon`` or ``~/.local/state/dagon`` |
| MQTT version | — | ``DAGON_MQTT_PROTOCOL`` | ``mqtt_protocol`` | ``"5"`` (``"3.1.1"`` for amqtt) |
| data server address | ``--data-host`` | ``DAGON_DATA_HOST`` | ``data_host`` | ``127.0.0.1`` |
| data server port | ``--data-port`` | ``DAGON_DATA_PORT`` | ``data_port`` | a free port |
| its URL for others | ``--data-url`` | ``DAGON_DATA_URL`` | ``data_url`` | ``http://<data_host>:<port>`` |
| host identity | — | ``DAGON_HOST_ID`` | ``host_id`` | ``/etc/machine-id`` (agents sharing it link files) |
| SSH access to this host | — | ``DAGON_SSH_URL`` | ``ssh_url`` | none (``ssh://user@host:port``) |
| serve outputs over HTTP | ``--no-data-server`` | ``DAGON_SERVE_DATA`` | ``serve_data`` | true |
| data server TLS | — | ``DAGON_DATA_TLS_CERT``, ``_KEY`` | ``data_tls_cert``, ``data_tls_key`` | none (plain HTTP) |
| CA for peers' data servers | — | ``DAGON_DATA_TLS_CA`` | ``data_tls_ca`` | the system's CAs |
| own SSH key for SFTP | — | ``DAGON_SSH_KEY`` | ``ssh_key`` | none |
| trusted SSH host keys | — | ``DAGON_SSH_KNOWN_HOSTS`` | ``ssh_known_hosts`` | ``~/.ssh/known_hosts`` |
| scratch on ``ip=`` hosts | — | ``DAGON_SSH_SCRATCH`` | ``ssh_scratch`` | ``dagon-scratch`` (under the remote home) |
| reachable by others | ``--unreachable`` | ``DAGON_REACHABLE`` | ``reachable`` | true (false: via the relay) |
| keep others' checkpoints | ``--checkpoint-store`` | ``DAGON_CHECKPOINT_STORE`` | ``checkpoint_store`` | false |
| task user | ``--run-as`` | ``DAGON_RUN_AS`` | ``run_as`` | the agent's own user |
| secrets file | — | ``DAGON_SECRETS_FILE`` | ``secrets_file`` | ``<home>/secrets.toml`` when it exists |
| broker TLS, login | — | ``DAGON_MQTT_CA`` … (see below) | ``mqtt_ca`` … | none |

Broker TLS and login: ``mqtt_ca``, ``mqtt_cert``, ``mqtt_key``, ``mqtt_username``,
``mqtt_password_file`` (environment: the same names upper-cased with a ``DAGON_``
prefix, e.g. ``DAGON_MQTT_CA``).
| runtimes | ``--runtimes docker,slurm,…`` | ``DAGON_RUNTIMES`` | ``runtimes`` (list) | ``auto``: detected containers |
| sensor devices | ``--devices serial:/dev/ttyACM0,…`` | ``DAGON_DEVICES`` | ``devices`` (list) | the detected |
| detect devices | — | ``DAGON_DETECT_DEVICES`` | ``detect_devices`` | true (serial, IIO, I²C) |

Further TOML-only keys: ``prefetch`` (assignments queued beyond the slots so a
slot never idles waiting for the coordinator; default: as many as slots),
``stage_mode`` (copy: the consumer's own copy, a reflink where the file system has them;
symlink: a link, for container runtimes only, which bind it read-only — other tasks get a copy;
hardlink: deprecated, means copy, since a hard link let a consumer change its producer's file),
``heartbeat_interval`` (seconds), ``python_pool`` (thread,
process), ``python_workers`` (default: as many as slots), ``max_message_size``
(bytes).

Durability keys (TOML; some also as environment variables; see docs/durability.md):
``spool_path`` (``DAGON_SPOOL``, default ``<home>/spool-<id>.sqlite``), ``spool_max_results``,
``spool_max_bytes``, ``spool_resend_after``, ``spool_max_age`` (seconds, 0 = never),
``telemetry_spool`` (samples), ``mqtt_session_expiry`` (``DAGON_MQTT_SESSION_EXPIRY``, seconds,
default 3600), ``mqtt_will_delay`` (``DAGON_MQTT_WILL_DELAY``, seconds, default 0) and
``mqtt_max_backoff`` (``DAGON_MQTT_MAX_BACKOFF``, seconds between reconnect attempts at most, default 30);
``wait_for_broker`` (``DAGON_WAIT_FOR_BROKER``, ``--no-wait-for-broker``; default true: a broker not up yet
is retried with that backoff, logged each minute, instead of ending the agent).

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
import pwd
import re
import socket
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

from dagon.agent._layout import LAYOUTS, ScratchLayout
from dagon.protocol import DEFAULT_MAX_SIZE, NAME_RE, ConfigError
from dagon.protocol._settings import as_bool, as_float, as_int, as_str, read_toml

__all__ = [
    "AgentConfig",
    "StageMode",
    "check_scratch_reachable",
    "data_client_tls",
    "data_server_tls",
    "default_home",
    "load_agent_config",
    "parse_labels",
    "stable_agent_id",
]

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
        scratch_layout: how they are named (``dagon.agent._layout``): ``"run"``, or
            ``"dagonstar"`` (DAGonStar's ``<epoch ms>-<task>``, for its scripts' ``dagon.ini``).
        broker: MQTT broker URL, ``None`` when not configured.
        labels: placement labels announced to coordinators.
        addresses: addresses of this host to announce besides its interfaces' (e.g. a public
            address in front of NAT), for tasks placed by host (DAGonStar's ``ip=``).
        slots: tasks run at the same time.
        prefetch: assignments accepted beyond ``slots`` and queued (-1: as many as slots).
        stage_mode: how local inputs are staged (an assignment may override it).
        heartbeat_interval: seconds between two heartbeats.
        python_pool: ``"thread"`` or ``"process"`` workers for the python runtime.
        python_workers: size of that pool (0: as many as slots).
        mqtt_protocol: ``"5"`` or ``"3.1.1"``.
        max_message_size: largest message accepted or sent, in bytes.
        secrets_file: TOML file of ``NAME = "value"`` for ``secret://NAME``
            placeholders (besides ``DAGON_SECRET_NAME`` environment variables).
        mqtt_ca, mqtt_cert, mqtt_key, mqtt_username, mqtt_password_file: how
            to authenticate to the broker (see ``dagon.protocol.transport.MqttAuth``).
        run_as: unprivileged user that process tasks run as (the agent must be
            root; python tasks, which run inside the agent, are then not offered).
        data_host, data_port: where the data server listens (loopback by default:
            set an address other hosts can reach for peer-to-peer staging).
        data_url: the URL other agents use for it (default ``http://data_host:port``).
        reachable: whether other hosts can connect to this agent at all.
        max_transfers: concurrent input pulls (and concurrent files served).
        host_id: overrides the machine identity: agents with the same one share a
            file system (inputs are linked), others pull over the network.
        serve_data: run the HTTP data server (off: outputs are read over SSH or relayed).
        inherit_env: process tasks start from the agent's whole environment (minus
            ``DAGON_SECRET_*``) instead of a minimal one — what the in-process agent of
            ``dagon run`` does: there the tasks are the user's own, like the script running them.
        ssh_url: ``ssh://user@host:port`` other agents may read this scratch root from over SFTP.
        ssh_key, ssh_known_hosts: this agent's key for SFTP staging (and the ssh and cloud
            runtimes), and the host keys it trusts.
        ssh_scratch: scratch root on hosts the ssh runtime runs tasks on (relative: under
            the remote home).
        data_tls_cert, data_tls_key: serve the data server over HTTPS with this certificate.
        data_tls_ca: CA bundle that signed peers' data server certificates.
        runtimes: runtimes to offer besides process, python and http (``docker``,
            ``charliecloud``, ``apptainer``, ``slurm``, ``ssh``, ``cloud``); ``None`` detects
            the container runtimes that work here, ``()`` offers none.
    """

    agent_id: str
    home: Path
    scratch: Path
    scratch_layout: ScratchLayout = "run"
    broker: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    slots: int = field(default_factory=_cpus)
    prefetch: int = -1
    stage_mode: StageMode = "copy"
    heartbeat_interval: float = 5.0
    python_pool: PythonPool = "thread"
    python_workers: int = 0
    mqtt_protocol: MqttProtocol = "5"
    max_message_size: int = DEFAULT_MAX_SIZE
    secrets_file: Path | None = None
    mqtt_ca: str | None = None
    mqtt_cert: str | None = None
    mqtt_key: str | None = None
    mqtt_username: str | None = None
    mqtt_password_file: str | None = None
    run_as: str | None = None
    data_host: str = "127.0.0.1"
    data_port: int = 0
    data_url: str | None = None
    reachable: bool = True
    max_transfers: int = 4
    host_id: str | None = None
    serve_data: bool = True
    inherit_env: bool = False
    ssh_url: str | None = None
    ssh_key: Path | None = None
    ssh_known_hosts: Path | None = None
    ssh_scratch: str = "dagon-scratch"
    data_tls_cert: Path | None = None
    data_tls_key: Path | None = None
    data_tls_ca: Path | None = None
    runtimes: tuple[str, ...] | None = None
    telemetry_interval: float = 5.0  # seconds between telemetry samples; 0 turns telemetry off
    power_source: str = "auto"  # see dagon.agent.power.POWER_SOURCES
    power_idle_watts: float = 5.0  # CPU model: power when idle
    power_max_watts: float = 15.0  # CPU model: power with every core busy
    power_mqtt_topic: str = ""  # external meter (Tasmota/Shelly JSON) on the agent's broker
    power_prometheus_url: str = ""
    power_prometheus_query: str = ""
    metrics_port: int = 0  # Prometheus exporter port; 0 = no exporter
    metrics_host: str = "127.0.0.1"
    # Accept uploads of checkpoint tasks' outputs (under <scratch>/.dagon-checkpoints) and serve
    # them: the coordinator stores checkpoints on such an agent instead of its own disk.
    checkpoint_store: bool = False
    # Durability (see docs/durability.md): the result spool and the MQTT session.
    spool_path: Path | None = None  # SQLite file of unacknowledged results; None: <home>/spool-<id>.sqlite
    spool_max_results: int = 10_000  # held results before new tasks are refused (nothing is dropped)
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_resend_after: float = 30.0  # seconds before an unacknowledged result is sent again (then doubling)
    spool_max_age: float = 7 * 86400.0  # seconds after which an unacknowledged result is dropped, logged; 0 never
    telemetry_spool: int = 1000  # telemetry samples kept while the broker is unreachable (0: none)
    mqtt_session_expiry: int = 3600  # seconds the broker keeps our session (queued QoS 1 messages) when cut off
    mqtt_will_delay: int = 0  # seconds the broker waits for us to come back before our Last Will goes out
    mqtt_max_backoff: float = 30.0  # cap of the (jittered, doubling) wait between reconnect attempts
    wait_for_broker: bool = True  # an unreachable broker at start is waited for (False: exit at once)
    # Sensors (docs/device.md): devices announced besides the detected ones, e.g. "serial:/dev/ttyACM0".
    devices: tuple[str, ...] = ()
    detect_devices: bool = True

    def __post_init__(self) -> None:
        _check_telemetry(self)
        _check_durability(self)
        if not _ID_RE.fullmatch(self.agent_id):
            raise ConfigError(
                f"agent id {self.agent_id!r} is not valid: use letters, digits, '.', '_' or '-' (max 100),"
                " starting with a letter or digit"
            )
        if self.slots < 1:
            raise ConfigError(f"slots must be at least 1, got {self.slots}")
        if self.prefetch < -1:
            raise ConfigError(f"prefetch must be 0 or more (-1: as many as slots), got {self.prefetch}")
        if self.scratch_layout not in LAYOUTS:
            raise ConfigError(f"scratch_layout must be one of {', '.join(LAYOUTS)}, got {self.scratch_layout!r}")
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
        if not 0 <= self.data_port <= 65535:
            raise ConfigError(f"data_port must be a TCP port (0: any free one), got {self.data_port}")
        if self.max_transfers < 1:
            raise ConfigError(f"max_transfers must be at least 1, got {self.max_transfers}")
        if (self.data_tls_cert is None) != (self.data_tls_key is None):
            raise ConfigError("data_tls_cert and data_tls_key go together: set both or neither")
        if self.ssh_url is not None and not self.ssh_url.startswith("ssh://"):
            raise ConfigError(f"ssh_url must look like ssh://user@host:port, got {self.ssh_url!r}")
        if self.data_url is not None and not self.data_url.startswith(("http://", "https://")):
            raise ConfigError(f"data_url must be an http:// or https:// URL, got {self.data_url!r}")
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

    @property
    def spool_file(self) -> Path:
        """Where the result spool lives (``spool_path``, else ``<home>/spool-<agent id>.sqlite``)."""
        return self.spool_path or self.home / f"spool-{self.agent_id}.sqlite"


def _check_telemetry(c: AgentConfig) -> None:
    if not c.telemetry_interval >= 0:
        raise ConfigError(f"telemetry_interval must be 0 (off) or a number of seconds, got {c.telemetry_interval}")
    if not 0 <= c.power_idle_watts <= c.power_max_watts:
        raise ConfigError(
            f"need 0 <= power_idle_watts <= power_max_watts, got {c.power_idle_watts} and {c.power_max_watts}"
        )
    if not 0 <= c.metrics_port <= 65535:
        raise ConfigError(f"metrics_port must be 0 (off) or a TCP port, got {c.metrics_port}")


def _check_durability(c: AgentConfig) -> None:
    if c.spool_max_results < 1 or c.spool_max_bytes < 1024:
        raise ConfigError(
            f"spool_max_results must be >= 1 and spool_max_bytes >= 1024, got {c.spool_max_results} and"
            f" {c.spool_max_bytes}"
        )
    if not c.spool_resend_after > 0 or not c.spool_max_age >= 0:
        raise ConfigError(
            f"spool_resend_after must be > 0 and spool_max_age >= 0 (0: never) seconds, got {c.spool_resend_after}"
            f" and {c.spool_max_age}"
        )
    if not c.mqtt_max_backoff > 0:
        raise ConfigError(f"mqtt_max_backoff must be a positive number of seconds, got {c.mqtt_max_backoff}")
    if c.telemetry_spool < 0:
        raise ConfigError(f"telemetry_spool must be 0 (keep none) or more samples, got {c.telemetry_spool}")
    if not 0 <= c.mqtt_session_expiry <= 0xFFFFFFFF or not 0 <= c.mqtt_will_delay <= 0xFFFFFFFF:
        raise ConfigError(
            f"mqtt_session_expiry and mqtt_will_delay must be 0 or more seconds, got {c.mqtt_session_expiry} and"
            f" {c.mqtt_will_delay}"
        )
    if c.mqtt_will_delay > c.mqtt_session_expiry:
        raise ConfigError(
            f"mqtt_will_delay ({c.mqtt_will_delay} s) cannot exceed mqtt_session_expiry ({c.mqtt_session_expiry} s):"
            " the broker sends the Last Will when the session ends"
        )


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


def _addresses(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"addresses must be 'a,b' or a TOML list of strings, got {value!r}")
    found = tuple(i.strip() for i in items if i.strip())
    bad = [i for i in found if any(c.isspace() or c in "/@" for c in i)]
    if bad:
        raise ConfigError(f"addresses must be IP addresses or host names, got {bad} (write e.g. --addresses 10.0.0.5)")
    return found


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return parse_labels(value)
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    raise ConfigError(f"labels must be 'k=v,…' or a TOML table, got {value!r}")


def _read_file(config_file: Path) -> dict[str, Any]:
    # [kubernetes] and [nomad] tables are read by dagon.agent.runtimes.orchestrator_runtimes.
    known = {f.name for f in fields(AgentConfig)} - {"agent_id"} | {"id", "kubernetes", "nomad"}
    return read_toml(config_file, known)


def _run_as(name: str) -> str:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"run_as: there is no user {name!r} on this machine (create it or fix the name)") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise ConfigError(f"run_as = {name!r} needs the agent to run as root (it runs as uid {os.geteuid()})")
    return name


def data_server_tls(config: AgentConfig) -> ssl.SSLContext | None:
    """The data server's TLS context, or None for plain HTTP.

    Raises:
        ConfigError: the certificate or key cannot be loaded.
    """
    if config.data_tls_cert is None or config.data_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.data_tls_cert, config.data_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the data server certificate {config.data_tls_cert}: {exc}") from None
    return context


def data_client_tls(config: AgentConfig) -> ssl.SSLContext | None:
    """How this agent verifies peers' HTTPS data servers (None: the system's CAs)."""
    if config.data_tls_ca is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(config.data_tls_ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the data CA bundle {config.data_tls_ca}: {exc}") from None


def check_scratch_reachable(scratch: Path, user: str) -> None:
    """Tasks running as ``user`` must reach their directories by absolute path.

    Raises:
        ConfigError: a parent of ``scratch`` is closed to other users (naming it).
    """
    entry = pwd.getpwnam(user)
    for parent in [scratch, *scratch.parents]:
        try:
            info = parent.stat()
        except FileNotFoundError:
            continue
        if info.st_uid != entry.pw_uid and not info.st_mode & stat.S_IXOTH:
            raise ConfigError(
                f"run_as = {user!r}: tasks cannot reach the scratch root {scratch} because {parent} is closed to"
                " other users; put the scratch root elsewhere (e.g. /var/lib/dagon/scratch) or chmod o+x it"
            )


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
    home = Path(as_str(home_value, "home")).expanduser() if home_value is not None else default_home(env)
    agent_id = pick("id", "DAGON_AGENT_ID")
    scratch = pick("scratch", "DAGON_SCRATCH")
    broker = pick("broker", "DAGON_BROKER")
    kwargs: dict[str, Any] = {
        "agent_id": as_str(agent_id, "agent id") if agent_id is not None else stable_agent_id(home),
        "home": home,
        "scratch": Path(as_str(scratch, "scratch")).expanduser() if scratch is not None else home / "scratch",
        "broker": as_str(broker, "broker") if broker is not None else None,
        "labels": _labels(pick("labels", "DAGON_LABELS")),
        "addresses": _addresses(pick("addresses", "DAGON_ADDRESSES")),
    }
    for key, env_name in (("slots", "DAGON_SLOTS"), ("python_workers", None), ("max_message_size", None)):
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = as_int(value, key)
    if (value := pick("prefetch")) is not None:
        kwargs["prefetch"] = as_int(value, "prefetch")
    for key, env_name in (
        ("stage_mode", None),
        ("python_pool", None),
        ("mqtt_protocol", "DAGON_MQTT_PROTOCOL"),
        ("scratch_layout", "DAGON_SCRATCH_LAYOUT"),
    ):
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = as_str(value, key)
    if (value := pick("heartbeat_interval")) is not None:
        kwargs["heartbeat_interval"] = as_float(value, "heartbeat_interval")
    if (value := pick("secrets_file", "DAGON_SECRETS_FILE")) is not None:
        kwargs["secrets_file"] = Path(as_str(value, "secrets_file")).expanduser()
    elif (home / "secrets.toml").is_file():
        kwargs["secrets_file"] = home / "secrets.toml"
    for key, env_name in (
        ("data_host", "DAGON_DATA_HOST"),
        ("data_url", "DAGON_DATA_URL"),
        ("host_id", "DAGON_HOST_ID"),
    ):
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = as_str(value, key)
    for key, env_name in (("data_port", "DAGON_DATA_PORT"), ("max_transfers", None)):
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = as_int(value, key)
    if (value := pick("reachable", "DAGON_REACHABLE")) is not None:
        kwargs["reachable"] = as_bool(value, "reachable")
    if (value := pick("serve_data", "DAGON_SERVE_DATA")) is not None:
        kwargs["serve_data"] = as_bool(value, "serve_data")
    if (value := pick("inherit_env")) is not None:
        kwargs["inherit_env"] = as_bool(value, "inherit_env")
    if (value := pick("checkpoint_store", "DAGON_CHECKPOINT_STORE")) is not None:
        kwargs["checkpoint_store"] = as_bool(value, "checkpoint_store")
    if (value := pick("ssh_url", "DAGON_SSH_URL")) is not None:
        kwargs["ssh_url"] = as_str(value, "ssh_url")
    for key in ("ssh_key", "ssh_known_hosts", "data_tls_cert", "data_tls_key", "data_tls_ca"):
        if (value := pick(key, f"DAGON_{key.upper()}")) is not None:
            kwargs[key] = Path(as_str(value, key)).expanduser()
    if (value := pick("ssh_scratch", "DAGON_SSH_SCRATCH")) is not None:
        kwargs["ssh_scratch"] = as_str(value, "ssh_scratch")
    if (value := pick("run_as", "DAGON_RUN_AS")) is not None:
        kwargs["run_as"] = _run_as(as_str(value, "run_as"))
    for key in ("mqtt_ca", "mqtt_cert", "mqtt_key", "mqtt_username", "mqtt_password_file"):
        if (value := pick(key, f"DAGON_{key.upper()}")) is not None:
            kwargs[key] = as_str(value, key)
    if (value := pick("runtimes", "DAGON_RUNTIMES")) is not None:
        kwargs["runtimes"] = _runtimes(value)
    if (value := pick("devices", "DAGON_DEVICES")) is not None:
        from dagon.agent.sensors._devices import parse_devices

        kwargs["devices"] = parse_devices(value)
    if (value := pick("detect_devices", "DAGON_DETECT_DEVICES")) is not None:
        kwargs["detect_devices"] = as_bool(value, "detect_devices")
    _load_telemetry(kwargs, pick)
    _load_durability(kwargs, pick)
    return AgentConfig(**kwargs)


def _runtimes(value: Any) -> tuple[str, ...] | None:
    """``"docker,charliecloud"`` or a TOML list; ``auto`` detects, ``none`` (or empty) offers none."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ConfigError(f"runtimes must be a list of names or 'a,b', got {value!r}")
    if items == ["auto"]:
        return None
    if items in ([], ["none"]):
        return ()
    if "auto" in items or "none" in items:
        raise ConfigError("runtimes: 'auto' and 'none' cannot be combined with runtime names")
    return tuple(items)


def _load_telemetry(kwargs: dict[str, Any], pick: Any) -> None:
    for key, env_name in (("telemetry_interval", "DAGON_TELEMETRY_INTERVAL"), ("power_idle_watts", None),
                          ("power_max_watts", None)):  # fmt: skip
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = as_float(value, key)
    if (value := pick("metrics_port", "DAGON_METRICS_PORT")) is not None:
        kwargs["metrics_port"] = as_int(value, "metrics_port")
    for key, env_name in (("power_source", "DAGON_POWER_SOURCE"), ("power_mqtt_topic", None),
                          ("power_prometheus_url", None), ("power_prometheus_query", None),
                          ("metrics_host", "DAGON_METRICS_HOST")):  # fmt: skip
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = as_str(value, key)


def _load_durability(kwargs: dict[str, Any], pick: Any) -> None:
    if (value := pick("spool_path", "DAGON_SPOOL")) is not None:
        kwargs["spool_path"] = Path(as_str(value, "spool_path")).expanduser()
    for key, env_name in (("spool_max_results", None), ("spool_max_bytes", None), ("telemetry_spool", None),
                          ("mqtt_session_expiry", "DAGON_MQTT_SESSION_EXPIRY"),
                          ("mqtt_will_delay", "DAGON_MQTT_WILL_DELAY")):  # fmt: skip
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = as_int(value, key)
    if (value := pick("wait_for_broker", "DAGON_WAIT_FOR_BROKER")) is not None:
        kwargs["wait_for_broker"] = as_bool(value, "wait_for_broker")
    for key, env_name in (("spool_resend_after", None), ("spool_max_age", None),
                          ("mqtt_max_backoff", "DAGON_MQTT_MAX_BACKOFF")):  # fmt: skip
        if (value := pick(key, env_name)) is not None:
            kwargs[key] = as_float(value, key)
