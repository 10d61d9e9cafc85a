"""``ip=`` tasks: the agent announcing that address runs them; with none online they need SSH (refused clearly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

from dagon.agent import load_agent_config
from dagon.protocol import ConfigError

from ._scripts import run_script, start_agent, wait_announced

SCRIPT = Path(__file__).parent / "scripts" / "remote_ip.py"
ADDRESS = "192.0.2.10"  # TEST-NET-1: announced by an agent, never contacted (the task goes over MQTT)


def test_agents_take_extra_addresses_to_announce(tmp_path: Path) -> None:
    config = load_agent_config(
        config_file=None, env={"DAGON_HOME": str(tmp_path)}, flags={"addresses": "10.0.0.5, h.lan"}
    )
    assert config.addresses == ("10.0.0.5", "h.lan")
    with pytest.raises(ConfigError, match="addresses must be IP addresses or host names"):
        load_agent_config(config_file=None, env={"DAGON_HOME": str(tmp_path)}, flags={"addresses": "ssh://x@y"})


@pytest.mark.mosquitto
def test_an_ip_task_runs_on_the_agent_at_that_address(mosquitto: Any, tmp_path: Path) -> None:
    there = start_agent(mosquitto.url, tmp_path / "there", "agent-there", extra=("--addresses", ADDRESS))
    here = start_agent(mosquitto.url, tmp_path / "here", "agent-here")
    try:
        wait_announced(mosquitto.url, "agent-there", "agent-here")
        out = run_script(SCRIPT, cwd=tmp_path, home=tmp_path / "client", DAGON_BROKER=mosquitto.url, REMOTE_IP=ADDRESS)
        assert out.returncode == 0, out.stderr
        workdir = Path(out.stdout.strip())
        assert workdir.is_relative_to(tmp_path / "there" / "scratch")
        assert (workdir / "r.txt").read_text() == "remote\n"
        assert not list((tmp_path / "here" / "scratch").glob("Remote-Ip-*/R-1"))

        # No agent at this address: the task would need SSH, which no agent offers yet.
        out = run_script(
            SCRIPT, cwd=tmp_path, home=tmp_path / "client", DAGON_BROKER=mosquitto.url, REMOTE_IP="192.0.2.99"
        )
        assert out.returncode == 1
        message = " ".join(out.stderr.split())
        assert "task(s) R have ip=192.0.2.99: no online agent announces that address" in message
        assert "Start dagon-agent on that host" in message
    finally:
        stop_process(there)
        stop_process(here)
