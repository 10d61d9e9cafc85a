"""DAGonStar's cross-process meta-workflow: two scripts, two processes, one standalone coordinator.

``wf2_transversal.py`` references ``workflow://wf1-transversal/...``, a workflow that
``wf1_transversal.py`` runs in another process. A standalone ``dagon coordinator``
links WF2's tasks to WF1's run; the embedded default says why it cannot.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

from dagon._remote import find_coordinator
from dagon.protocol.transport import MqttTransport

from ._scripts import DAGON, environ, run_cli, run_script, start_agent

SCRIPTS = Path(__file__).parent / "scripts"
WF1 = SCRIPTS / "wf1_transversal.py"
WF2 = SCRIPTS / "wf2_transversal.py"


def wait_for_coordinator(url: str, ident: str) -> None:
    """Until the coordinator process is online (its retained status), as a user would wait for it."""

    async def online() -> None:
        async with MqttTransport(url, client_id="test-wait-coordinator", protocol="5") as transport:
            await find_coordinator(transport, transport.messages(), wait=60, wanted=ident)

    asyncio.run(online())


def test_a_coordinator_that_is_not_online_is_named(mosquitto: Any, tmp_path: Path) -> None:
    env = {"DAGON_BROKER": mosquitto.url, "DAGON_COORDINATOR": "nobody"}
    out = run_script(WF2, cwd=tmp_path, home=tmp_path / "home", **env)
    assert out.returncode == 1
    assert f"no coordinator with id 'nobody' answered on {mosquitto.url}" in out.stderr, out.stderr


def test_the_embedded_default_says_why_it_cannot_link_to_another_process(tmp_path: Path) -> None:
    out = run_script(WF2, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 1
    message = " ".join(out.stderr.split())
    assert "references workflow 'wf1-transversal'" in message
    assert "this process does not run" in message
    assert "DAGON_BROKER=URL DAGON_COORDINATOR=auto" in message
    assert not list((tmp_path / "home").glob("scratch/wf2-*"))  # nothing ran


@pytest.mark.mosquitto
def test_two_scripts_link_through_a_standalone_coordinator(mosquitto: Any, tmp_path: Path) -> None:
    coord_home = tmp_path / "coord"
    agent = start_agent(mosquitto.url, tmp_path / "agent", "transversal-agent", coordinator_home=coord_home)
    coordinator = subprocess.Popen(
        [*DAGON, "coordinator", "--broker", mosquitto.url, "--id", "main"],
        env=environ(coord_home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wf1: subprocess.Popen[str] | None = None
    try:
        wait_for_coordinator(mosquitto.url, "main")
        started = tmp_path / "wf1-started"
        env = environ(
            coord_home, DAGON_BROKER=mosquitto.url, DAGON_COORDINATOR="main", WF1_STARTED=str(started),
            WF_SCRATCH=str(tmp_path / "unused"),
        )  # fmt: skip
        (tmp_path / "wf1").mkdir()
        (tmp_path / "wf2").mkdir()
        wf1 = subprocess.Popen(
            [sys.executable, str(WF1)], cwd=tmp_path / "wf1", env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        # WF2 is started once WF1's first task has run, i.e. while WF1 is still running (as DAGonStar's README says).
        while not started.exists():
            if wf1.poll() is not None:
                pytest.fail(f"wf1 ended before its first task ran: {wf1.communicate()}")
            time.sleep(0.1)
        out = subprocess.run(
            [sys.executable, str(WF2)], cwd=tmp_path / "wf2", env=env, text=True, capture_output=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[-2] == "['from-A', 'from-E', 'from-C']"
        first_out, first_err = wf1.communicate(timeout=120)
        assert wf1.returncode == 0, first_err
        assert first_out.startswith("wf1 done wf1-transversal-")
        # `dagon submit` of WF2 alone: its reference to WF1 resolves on the coordinator (no client-side refusal)
        out = run_cli(
            "submit", str(WF2), "--broker", mosquitto.url, "--coordinator", "main", "--wait",
            cwd=tmp_path / "wf2", home=coord_home, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0].startswith("wf2-transversal-")
        # the as_json document is written where the script writes it (its working directory)
        assert (tmp_path / "wf2" / "wf2-transversal.json").is_file()
        assert not (tmp_path / "unused").exists()  # with a broker, the agent's own scratch is used
    finally:
        if wf1 is not None and wf1.poll() is None:
            wf1.kill()
            wf1.communicate()
        stop_process(agent)
        stop_process(coordinator)
