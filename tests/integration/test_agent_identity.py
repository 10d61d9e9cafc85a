"""Two agents with one id (issue 13, point 5): the second refuses to start, naming the first;
``dagon agents`` lists every agent once. Real ``dagon-agent`` processes, real Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

from dagon._keys import coordinator_signer, enroll

pytestmark = pytest.mark.mosquitto

AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]


def agent_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_AGENT_ID", "DAGON_BROKER")}
    return {**env, "DAGON_HOME": str(home)}


def wait_for_line(path: Path, text: str, within: float) -> None:
    deadline = time.monotonic() + within
    while text not in (path.read_text() if path.exists() else ""):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {path} after {within} s:\n{path.read_text()}")
        time.sleep(0.05)


def test_a_second_agent_with_the_same_home_and_id_refuses_to_start(mosquitto: Any, tmp_path: Path) -> None:
    home = tmp_path / "shared"
    home.mkdir()
    coordinator_signer(tmp_path / "client")
    enroll(home, tmp_path / "client" / "keys" / "coordinator.pub")
    log = home / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen(
            [*AGENT, "--broker", mosquitto.url, "--slots", "1"], env=agent_env(home), stdout=out, stderr=out
        )
    try:
        wait_for_line(log, " online: ", 30)
        agent_id = (home / "agent-id").read_text().strip()
        second = subprocess.run(
            [*AGENT, "--broker", mosquitto.url, "--slots", "1"],
            env=agent_env(home), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 2
        assert f"another agent with id {agent_id!r} is already running from {home} (pid {first.pid})" in second.stderr
        assert "--id NAME" in second.stderr
        listed = subprocess.run(
            [*DAGON, "agents", "--json", "--broker", mosquitto.url],
            env=agent_env(tmp_path / "client"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert [row["id"] for row in json.loads(listed.stdout)] == [agent_id]
        assert first.poll() is None  # the first one was never knocked off
        assert "reconnect" not in log.read_text()
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        stop_process(first)
    # The lock dies with its holder, however it ends: the same id starts again at once.
    with (home / "again.log").open("wb") as out:
        again = subprocess.Popen(
            [*AGENT, "--broker", mosquitto.url, "--slots", "1"], env=agent_env(home), stdout=out, stderr=out
        )
    try:
        wait_for_line(home / "again.log", " online: ", 30)
    finally:
        stop_process(again)
