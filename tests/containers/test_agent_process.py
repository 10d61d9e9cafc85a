"""A real ``dagon-agent`` process detects the private dockerd and runs a container workflow
submitted with ``dagon run --broker`` through a real Mosquitto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from _containers import BUSYBOX_IMAGE, Dockerd
from _keys import admit

from dagon._keys import coordinator_signer, enroll

pytestmark = [pytest.mark.docker, pytest.mark.mosquitto]

ROOT = Path(__file__).resolve().parent.parent.parent
AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]


def test_agent_process_auto_detects_docker_and_runs_containers(
    dockerd: Dockerd, mosquitto: Any, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_RUNTIMES")}
    env["DOCKER_HOST"] = dockerd.url  # default runtimes: auto-detected (dockerd answers /_ping)
    script = tmp_path / "wf.py"
    script.write_text(
        "import dagon\n"
        "wf = dagon.Workflow('boxed')\n"
        f"wf.container('a', image={BUSYBOX_IMAGE!r}, command='echo boxed > a.txt', agent='proc-agent')\n"
        f"wf.container('b', image={BUSYBOX_IMAGE!r}, command='cat workflow:///a/a.txt > b.txt')\n"
    )
    coordinator_signer(tmp_path / "cli")  # the CLI's coordinator key, enrolled with the agent
    enroll(tmp_path / "agent", tmp_path / "cli" / "keys" / "coordinator.pub")
    admit(tmp_path / "cli", "proc-agent", tmp_path / "agent")  # and the agent with the CLI's coordinator
    agent = subprocess.Popen(
        [*AGENT, "--broker", mosquitto.url, "--id", "proc-agent", "--scratch", str(tmp_path / "scratch")],
        env=dict(env, DAGON_HOME=str(tmp_path / "agent")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out = subprocess.run(
            [*DAGON, "run", str(script), "--broker", mosquitto.url],
            env=dict(env, DAGON_HOME=str(tmp_path / "cli"), COLUMNS="200"),
            capture_output=True, text=True, timeout=90, cwd=ROOT, check=False,
        )  # fmt: skip
    finally:
        stop_process(agent)
    assert out.returncode == 0, out.stdout + out.stderr
    results = list((tmp_path / "scratch").glob("*/b-1/b.txt"))
    assert len(results) == 1 and results[0].read_text() == "boxed\n"
