"""Runtime detection and the agent's ``runtimes`` setting (TOML, environment, flag, embedded agent)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
from _containers import Dockerd

from dagon._embedded import EmbeddedBroker
from dagon._keys import coordinator_signer
from dagon._local import start_embedded_agent
from dagon.agent import load_agent_config
from dagon.agent.runtimes import (
    ApptainerRuntime,
    CharliecloudRuntime,
    DockerRuntime,
    HttpRuntime,
    detect_runtimes,
    docker_answers,
    select_runtimes,
)
from dagon.cli import agent_main as main
from dagon.protocol import ConfigError


def _config(tmp_path: Path, *, env: dict[str, str] | None = None, flag: str | None = None, toml: str = "") -> object:
    config_file = None
    if toml:
        config_file = tmp_path / "agent.toml"
        config_file.write_text(toml)
    return load_agent_config(
        config_file=config_file, env={"DAGON_HOME": str(tmp_path), **(env or {})}, flags={"id": "a", "runtimes": flag}
    ).runtimes


def test_runtimes_setting_precedence_and_values(tmp_path: Path) -> None:
    assert _config(tmp_path) is None  # default: detect
    assert _config(tmp_path, toml='runtimes = ["docker", "apptainer"]\n') == ("docker", "apptainer")
    assert _config(tmp_path, toml='runtimes = ["docker"]\n', env={"DAGON_RUNTIMES": "charliecloud"}) == (
        "charliecloud",
    )
    assert _config(tmp_path, env={"DAGON_RUNTIMES": "charliecloud"}, flag="none") == ()
    assert _config(tmp_path, flag="auto") is None
    with pytest.raises(ConfigError, match="cannot be combined"):
        _config(tmp_path, flag="auto,docker")
    with pytest.raises(ConfigError, match="list of names"):
        _config(tmp_path, toml="runtimes = 3\n")


async def test_select_builds_the_named_runtimes(tmp_path: Path) -> None:
    built = await select_runtimes(["charliecloud", "apptainer", "docker"], home=tmp_path, scratch=tmp_path / "s")
    # http is built in (like process and python): always there, naming it changes nothing
    assert [type(r) for r in built] == [CharliecloudRuntime, ApptainerRuntime, DockerRuntime, HttpRuntime]
    assert [type(r) for r in await select_runtimes((), home=tmp_path, scratch=tmp_path)] == [HttpRuntime]
    named = await select_runtimes(["process", "ssh", "http"], home=tmp_path, scratch=tmp_path)
    assert [r.name for r in named] == ["ssh", "http"]
    with pytest.raises(ConfigError, match="unknown runtime 'podman'"):
        await select_runtimes(["podman"], home=tmp_path, scratch=tmp_path)


async def test_docker_is_detected_only_when_the_engine_answers(tmp_path: Path) -> None:
    assert not await docker_answers(f"unix://{tmp_path}/absent.sock")
    # a socket that takes connections but never answers (not a Docker engine): times out
    path = tmp_path / "mute.sock"
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as mute:
        mute.bind(str(path))
        mute.listen()
        assert not await docker_answers(f"unix://{path}")


@pytest.mark.docker
@pytest.mark.charliecloud
async def test_detection_on_this_host(
    dockerd: Dockerd, busybox_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # busybox_tree: skips locally / fails in CI when ch-run is missing
    assert await docker_answers(dockerd.url)
    found = await detect_runtimes(docker_url=dockerd.url)
    assert found[0] == "docker"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apptainer").write_text("#!/bin/sh\nexit 0\n")
    (fake / "apptainer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    assert await detect_runtimes(docker_url=dockerd.url) == ["docker", "charliecloud", "apptainer"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert await detect_runtimes(docker_url=f"unix://{tmp_path}/none.sock") == []


def test_agent_cli_rejects_an_unknown_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DAGON_HOME", str(tmp_path))
    assert main(["--broker", "mqtt://127.0.0.1:1", "--id", "x", "--runtimes", "docker,podman"]) == 2
    assert "unknown runtime 'podman'" in capsys.readouterr().err


async def test_embedded_agent_announces_the_configured_runtimes(
    embedded_broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGON_RUNTIMES", "charliecloud")
    coordinator_signer(tmp_path)  # the in-process coordinator's key, which the embedded agent trusts
    async with contextlib.AsyncExitStack() as stack:
        agent = await start_embedded_agent(stack, url=embedded_broker.url, home=tmp_path, slots=1, coordinator="test")
        assert "charliecloud" in agent.capabilities.runtimes
        assert "docker" not in agent.capabilities.runtimes
