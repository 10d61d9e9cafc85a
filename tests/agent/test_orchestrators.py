"""The ``[kubernetes]`` and ``[nomad]`` tables of the agent's TOML file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dagon.agent import load_agent_config
from dagon.agent.runtimes import KubernetesRuntime, NomadRuntime, orchestrator_runtimes, read_orchestrator_settings
from dagon.cli import agent_main as main
from dagon.protocol import ConfigError

FULL = """
id = "edge-1"

[kubernetes]
namespace = "dagon"
in_cluster = false
kubeconfig = "/etc/dagon/kubeconfig"
node_name_env = "MY_NODE"
watch_timeout = 120

[nomad]
address = "https://nomad.lab:4646"
token_env = "LAB_NOMAD_TOKEN"
datacenters = ["lab", "lab2"]
region = "eu"
node = "pi-1"
wait = 30
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_tables_build_both_runtimes_and_the_agent_config_accepts_them(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_agent_config(config_file=path, env={"DAGON_HOME": str(tmp_path)}, flags={})
    assert config.agent_id == "edge-1"
    kubernetes, nomad = read_orchestrator_settings(path)
    assert kubernetes is not None and kubernetes.namespace == "dagon" and kubernetes.watch_timeout == 120
    assert nomad is not None and nomad.datacenters == ["lab", "lab2"] and nomad.wait == 30
    env = {"LAB_NOMAD_TOKEN": "tok-123", "MY_NODE": "node-7"}
    k8s, nmd = orchestrator_runtimes(config_file=path, scratch=tmp_path / "scratch", env=env)
    assert isinstance(k8s, KubernetesRuntime) and k8s._node_name == "node-7" and k8s._namespace == "dagon"
    assert isinstance(nmd, NomadRuntime) and nmd._token == "tok-123" and nmd._region == "eu"
    assert "tok-123" not in repr(nmd)


def test_no_tables_no_runtimes(tmp_path: Path) -> None:
    assert orchestrator_runtimes(config_file=None, scratch=tmp_path, env={}) == []
    assert orchestrator_runtimes(config_file=write(tmp_path, 'id = "a"\n'), scratch=tmp_path, env={}) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[nomad]\ntoken = "abc"\n', "token must not be written in the config file"),
        ('[nomad]\nadress = "http://x"\n', "[nomad]: unknown setting(s) ['adress']"),
        ('[nomad]\ndatacenters = "dc1"\n', "[nomad] datacenters must be a non-empty list of strings"),
        ('[nomad]\naddress = "nomad:4646"\n', "must start with http:// or https://"),
        ("[nomad]\nwait = 3600\n", "wait must be between 1 and 600"),
        ('[nomad]\nclient_cert = "/c.pem"\n', "give both client_cert and client_key"),
        ('[kubernetes]\nin_cluster = "yes"\n', "[kubernetes] in_cluster must be true or false"),
        ("[kubernetes]\nwatch_timeout = true\n", "[kubernetes] watch_timeout must be a whole number"),
        ("kubernetes = 3\n", "[kubernetes] must be a TOML table"),
    ],
)
def test_bad_tables_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        orchestrator_runtimes(config_file=write(tmp_path, text), scratch=tmp_path, env={})
    assert message in str(exc.value)


def test_dagon_agent_reports_a_bad_table_and_never_the_token(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DAGON_HOME", str(tmp_path))
    monkeypatch.setenv("NOMAD_TOKEN", "tok-secret")
    path = write(tmp_path, "[nomad]\ndatacenters = []\n")
    assert main(["--broker", "mqtt://127.0.0.1:1", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[nomad] datacenters must be a non-empty list" in err
    assert "tok-secret" not in err and "tok-secret" not in caplog.text
