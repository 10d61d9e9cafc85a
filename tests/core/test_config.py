"""The standalone coordinator's configuration: precedence, validation, one name for the run store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dagon.core import CoordinatorConfig, load_coordinator_config
from dagon.core._config import RUN_STORE_FILE, env_insecure, env_mqtt_login, env_mqtt_protocol, run_store_path
from dagon.protocol import ConfigError


def _load(tmp_path: Path, *, file: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> Any:
    toml = None
    if file is not None:
        toml = tmp_path / "coordinator.toml"
        toml.write_text(file)
    return load_coordinator_config(config_file=toml, env=env or {}, flags=flags, default_home=tmp_path / "default")


def test_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert config == CoordinatorConfig(home=tmp_path / "default")
    assert (config.coordinator_id, config.broker, config.mqtt_protocol) == ("main", None, "5")
    assert (config.heartbeat_ttl, config.requeue_grace, config.mqtt_session_expiry) == (15.0, 10.0, 3600)
    assert (config.relay_host, config.relay_port, config.metrics_port, config.mongo_url) == ("127.0.0.1", 0, 0, None)
    assert config.store_path == tmp_path / "default" / "runs.sqlite" == run_store_path(config.home)
    assert config.relay_dir == tmp_path / "default" / "relay"
    assert config.relay_tls() is None
    assert not config.insecure and not config.enrolled_agents_only


def test_flags_beat_environment_beats_file_beats_defaults(tmp_path: Path) -> None:
    file = (
        'id = "from-file"\nbroker = "mqtt://file:1883"\nheartbeat_ttl = 30\nrelay_port = 7000\n'
        'mqtt_protocol = "3.1.1"\nmongo_url = "mongodb://file/"\nmongo_db = "file-db"\n'
    )
    env = {"DAGON_BROKER": "mqtt://env:1883", "DAGON_MONGO_DB": "env-db", "DAGON_HOME": str(tmp_path / "env-home")}
    config = _load(tmp_path, file=file, env=env, relay_port=7001, id=None)
    assert config.broker == "mqtt://env:1883"  # environment over file
    assert config.relay_port == 7001  # flag over file
    assert config.coordinator_id == "from-file"  # a None flag is "not given"
    assert config.heartbeat_ttl == 30.0 and config.mqtt_protocol == "3.1.1"  # only in the file
    assert config.mongo_db == "env-db"
    assert config.home == tmp_path / "env-home"  # $DAGON_HOME over the default
    assert _load(tmp_path, file=file, env=env, broker="mqtt://flag:1883").broker == "mqtt://flag:1883"


def test_empty_environment_variables_count_as_unset(tmp_path: Path) -> None:
    config = _load(tmp_path, file='broker = "mqtt://file:1883"\n', env={"DAGON_BROKER": "", "DAGON_MQTT_PROTOCOL": ""})
    assert config.broker == "mqtt://file:1883" and config.mqtt_protocol == "5"


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("YES", True), ("0", False), ("no", False), ("x", False)]
)
def test_insecure_from_the_environment_reads_as_before(tmp_path: Path, value: str, expected: bool) -> None:
    assert _load(tmp_path, env={"DAGON_INSECURE": value}).insecure is expected
    assert env_insecure({"DAGON_INSECURE": value}) is expected
    # the flag is store_true: given, it wins over an environment that says no
    assert _load(tmp_path, env={"DAGON_INSECURE": value}, insecure=True).insecure is True


def test_mqtt_settings_come_from_one_table(tmp_path: Path) -> None:
    env = {"DAGON_MQTT_USERNAME": "coord", "DAGON_MQTT_PROTOCOL": "3.1.1", "DAGON_MQTT_CA": ""}
    assert env_mqtt_protocol(env) == "3.1.1" and env_mqtt_protocol({}) == "5"
    login = env_mqtt_login(env)
    assert login == {"mqtt_ca": None, "mqtt_cert": None, "mqtt_key": None, "mqtt_username": "coord",
                     "mqtt_password_file": None}  # fmt: skip
    config = _load(tmp_path, env=env)
    assert config.mqtt_username == "coord"
    assert config.mqtt_auth().username == "coord"


@pytest.mark.parametrize(
    ("file", "env", "flags", "message"),
    [
        ("bogus = 1\n", {}, {}, "unknown setting(s) ['bogus']"),
        ("heartbeat_ttl = [\n", {}, {}, "is not valid TOML"),
        ('heartbeat_ttl = "soon"\n', {}, {}, "heartbeat_ttl must be a number of seconds"),
        ("relay_port = 70000\n", {}, {}, "relay_port must be a port number"),
        ('relay_port = "x"\n', {}, {}, "relay_port must be a whole number"),
        ("insecure = 1\n", {}, {}, "insecure must be true or false"),
        ("broker = 5\n", {}, {}, "broker must be a string"),
        ('mqtt_protocol = "4"\n', {}, {}, "mqtt_protocol must be '5' or '3.1.1', got '4'"),
        (None, {"DAGON_MQTT_PROTOCOL": "bogus"}, {}, "DAGON_MQTT_PROTOCOL must be '5' or '3.1.1', got 'bogus'"),
        (None, {"DAGON_MQTT_SESSION_EXPIRY": "1h"}, {}, "DAGON_MQTT_SESSION_EXPIRY must be a whole number of seconds"),
        (None, {}, {"mongo_db": "metrics"}, "--mongo-db and --mongo-buffer need --mongo-url (or DAGON_MONGO_URL)"),
        (
            None,
            {"DAGON_MONGO_URL": "mongodb://h/", "DAGON_MONGO_BUFFER": "lots"},
            {},
            "DAGON_MONGO_BUFFER='lots': expected a number of documents",
        ),
        (None, {}, {"mongo_url": "mongodb://h/", "mongo_buffer": 0}, "--mongo-buffer 0: must be at least 1"),
        (None, {}, {"relay_tls_cert": "cert.pem"}, "--relay-tls-cert and --relay-tls-key go together"),
        (None, {}, {"heartbeat_ttl": -1.0}, "heartbeat_ttl must be 0 or more seconds"),
    ],
)
def test_bad_values_say_what_to_change(
    tmp_path: Path, file: str | None, env: dict[str, str], flags: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, file=file, env=env, **flags)
    assert message in str(info.value)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist \(check --config\)"):
        load_coordinator_config(config_file=tmp_path / "nope.toml", env={}, flags={}, default_home=tmp_path)


def test_mongo_buffer_without_a_url_is_not_read(tmp_path: Path) -> None:
    # as before the configuration existed: DAGON_MONGO_BUFFER matters only with a sink
    assert _load(tmp_path, env={"DAGON_MONGO_BUFFER": "lots"}).mongo_buffer == 100_000


def test_the_run_store_is_named_once() -> None:
    root = Path(__file__).resolve().parents[2]
    sources = [p for folder in ("core", "agent", "protocol", "dagon") for p in (root / folder).rglob("*.py")]
    naming = [p.relative_to(root).as_posix() for p in sources if f'"{RUN_STORE_FILE}"' in p.read_text()]
    assert naming == ["core/_config.py"]


def test_a_relay_certificate_that_cannot_load_is_named(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    config = _load(tmp_path, relay_tls_cert=str(tmp_path / "cert.pem"), relay_tls_key=str(tmp_path / "key.pem"))
    with pytest.raises(ConfigError, match=r"cannot load the relay certificate .*cert\.pem"):
        config.relay_tls()


def test_how_long_finished_runs_stay_in_memory(tmp_path: Path) -> None:
    default = _load(tmp_path)
    assert (default.keep_finished, default.keep_finished_tasks) == (600.0, 100_000)
    file = tmp_path / "c.toml"
    file.write_text("keep_finished = 30\nkeep_finished_tasks = 5000\n")
    config = load_coordinator_config(config_file=file, env={}, flags={"keep_finished_tasks": 10}, default_home=tmp_path)
    assert (config.keep_finished, config.keep_finished_tasks) == (30.0, 10)
    with pytest.raises(ConfigError, match="keep_finished must be 0 or more"):
        load_coordinator_config(config_file=None, env={}, flags={"keep_finished": -1}, default_home=tmp_path)


def test_public_results_on_by_default_off_by_flag_environment_or_file(tmp_path: Path) -> None:
    assert _load(tmp_path).public_results is True
    assert _load(tmp_path, public_results=False).public_results is False  # --no-public-results
    assert _load(tmp_path, env={"DAGON_PUBLIC_RESULTS": "no"}).public_results is False
    assert _load(tmp_path, file="public_results = false\n").public_results is False
    with pytest.raises(ConfigError, match="DAGON_PUBLIC_RESULTS must be true or false, got 'sometimes'"):
        _load(tmp_path, env={"DAGON_PUBLIC_RESULTS": "sometimes"})
