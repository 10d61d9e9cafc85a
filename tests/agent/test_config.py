"""Agent configuration: precedence, validation, stable identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagon.agent import AgentConfig, default_home, load_agent_config, parse_labels
from dagon.protocol import ConfigError


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('broker = "mqtt://file:1883"\nslots = 3\nstage_mode = "copy"\n[labels]\nsite = "file"\n')
    env = {"DAGON_HOME": str(tmp_path / "home"), "DAGON_BROKER": "mqtt://env:1883", "DAGON_LABELS": "site=env"}
    config = load_agent_config(config_file=toml, env=env, flags={"slots": 7, "broker": None})
    assert config.broker == "mqtt://env:1883"  # env beats file; a None flag is "not given"
    assert config.slots == 7  # flag beats file
    assert config.labels == {"site": "env"}
    assert config.stage_mode == "copy"  # only in the file
    assert config.scratch == tmp_path / "home" / "scratch"


def test_stable_id_survives_restarts(tmp_path: Path) -> None:
    env = {"DAGON_HOME": str(tmp_path)}
    first = load_agent_config(config_file=None, env=env, flags={}).agent_id
    second = load_agent_config(config_file=None, env=env, flags={}).agent_id
    assert first == second
    assert (tmp_path / "agent-id").read_text().strip() == first
    assert load_agent_config(config_file=None, env=env, flags={"id": "pinned"}).agent_id == "pinned"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"slots": 0}, "slots must be at least 1"),
        ({"slots": "many"}, "slots must be a whole number"),
        ({"id": "bad id!"}, "agent id 'bad id!' is not valid"),
        ({"labels": "novalue"}, "is not key=value"),
    ],
)
def test_invalid_settings_say_what_to_change(tmp_path: Path, flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_agent_config(config_file=None, env={"DAGON_HOME": str(tmp_path)}, flags=flags)


def test_bad_config_files(tmp_path: Path) -> None:
    env = {"DAGON_HOME": str(tmp_path)}
    with pytest.raises(ConfigError, match="does not exist"):
        load_agent_config(config_file=tmp_path / "nope.toml", env=env, flags={})
    broken = tmp_path / "broken.toml"
    broken.write_text("slots = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_agent_config(config_file=broken, env=env, flags={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("slotz = 3")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['slotz'\]"):
        load_agent_config(config_file=unknown, env=env, flags={})


def test_parse_labels() -> None:
    assert parse_labels(" site=lab , gpu=no,") == {"site": "lab", "gpu": "no"}


def test_defaults_and_xdg_home(tmp_path: Path) -> None:
    config = load_agent_config(config_file=None, env={"XDG_STATE_HOME": str(tmp_path / "state")}, flags={})
    assert config.home == tmp_path / "state" / "dagon"
    assert config.scratch == config.home / "scratch"
    assert (config.home / "agent-id").is_file()
    assert config.broker is None and config.labels == {}
    assert (config.stage_mode, config.python_pool, config.heartbeat_interval) == ("copy", "thread", 5.0)
    assert config.slots >= 1 and config.workers == config.slots
    assert default_home({}) == Path.home() / ".local" / "state" / "dagon"


def test_every_environment_variable(tmp_path: Path) -> None:
    env = {
        "DAGON_HOME": str(tmp_path / "h"),
        "DAGON_BROKER": "mqtt://b:1883",
        "DAGON_AGENT_ID": "env-id",
        "DAGON_SCRATCH": str(tmp_path / "s"),
        "DAGON_LABELS": "a=1,b=2",
        "DAGON_SLOTS": "5",
    }
    config = load_agent_config(config_file=None, env=env, flags={})
    assert (config.home, config.broker, config.agent_id) == (tmp_path / "h", "mqtt://b:1883", "env-id")
    assert (config.scratch, config.labels, config.slots) == (tmp_path / "s", {"a": "1", "b": "2"}, 5)
    assert not (tmp_path / "h" / "agent-id").exists()  # a configured id is not persisted


def test_file_only_settings(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'id = "file-id"\nheartbeat_interval = 0.5\npython_pool = "process"\npython_workers = 3\n'
        'mqtt_protocol = "3.1.1"\nmax_message_size = 65536\nprefetch = 0\n'
    )
    config = load_agent_config(config_file=toml, env={"DAGON_HOME": str(tmp_path)}, flags={})
    assert config.agent_id == "file-id" and config.heartbeat_interval == 0.5
    assert (config.python_pool, config.workers, config.mqtt_protocol) == ("process", 3, "3.1.1")
    assert (config.max_message_size, config.queue_depth) == (65536, 0)


def test_stored_id_that_is_invalid_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "agent-id").write_text("bad id!\n")
    with pytest.raises(ConfigError, match="delete the file or pass --id"):
        load_agent_config(config_file=None, env={"DAGON_HOME": str(tmp_path)}, flags={})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('stage_mode = "teleport"', "stage_mode must be one of hardlink, symlink, copy"),
        ('python_pool = "gpu"', "python_pool must be 'thread' or 'process'"),
        ('heartbeat_interval = "often"', "heartbeat_interval must be a number"),
        ("heartbeat_interval = 0", "heartbeat_interval must be a positive number"),
        ('mqtt_protocol = "4"', "mqtt_protocol must be '5' or '3.1.1'"),
        ("slots = true", "slots must be a whole number"),
        ("broker = 5", "broker must be a string"),
        ("labels = 5", "labels must be"),
        ("max_message_size = 10", "max_message_size must be at least 1024"),
        ("python_workers = -1", "python_workers must be 0"),
    ],
)
def test_invalid_file_values(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=message):
        load_agent_config(config_file=path, env={"DAGON_HOME": str(tmp_path)}, flags={})


def test_config_is_frozen_and_keyword_only(tmp_path: Path) -> None:
    config = load_agent_config(config_file=None, env={"DAGON_HOME": str(tmp_path)}, flags={"id": "x"})
    with pytest.raises(AttributeError):
        config.slots = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        AgentConfig("x", tmp_path, tmp_path)  # type: ignore[call-arg]
