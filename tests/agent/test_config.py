"""Agent configuration: precedence, validation, stable identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagon.agent import load_agent_config, parse_labels
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
