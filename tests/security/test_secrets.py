"""Issue 15, attack 3: a task sees only the secrets it references, never in its argv; what it
leaks is redacted; state files are private. Real processes, real Mosquitto."""

from __future__ import annotations

import base64
import sqlite3
import stat

import pytest

from ._deploy import Deployment, retained, task_results

pytestmark = pytest.mark.mosquitto

API = "api-7f3a9c1e5b2d4f60"
OTHER = "other-0d1e2f3a4b5c6d7e"
BROKER_PASSWORD = "broker-pw-99aa88bb77cc"


async def test_a_task_gets_only_what_it_references_and_leaks_are_redacted(deployment: Deployment) -> None:
    deployment.start_coordinator()
    env = {"DAGON_SECRET_API": API, "DAGON_SECRET_OTHER": OTHER, "SOME_CLOUD_TOKEN": BROKER_PASSWORD}
    deployment.start_agent("edge", env=env)
    snoop = (
        "env > env.txt; cat /proc/$$/cmdline | tr '\\0' ' ' > cmdline.txt;"
        ' test "secret://API" = "$DAGON_SECRET_API" && echo same > check.txt;'
        ' echo "full secret://API" >&2; printf %s "secret://API" | base64 >&2;'
        ' printf %s "secret://API" | cut -c1-12 >&2; echo "to stdout: secret://API"; exit 3'
    )
    wf = deployment.workflow("snoop", [("snoop", snoop, {"env": {"MINE": "mine", "TOKEN": "secret://API"}})])
    run, _out = deployment.submit(wf)
    doc = (await task_results(deployment.url, run))["snoop"]
    assert doc["state"] == "failed" and doc["exit_code"] == 3, doc
    workdir = deployment.agent_home("edge") / "scratch" / run / "snoop-1"
    seen_env = (workdir / "env.txt").read_text()
    assert f"DAGON_SECRET_API={API}" in seen_env and f"TOKEN={API}" in seen_env and "MINE=mine" in seen_env
    assert OTHER not in seen_env and BROKER_PASSWORD not in seen_env  # nothing it did not ask for
    assert "DAGON_HOME" not in seen_env
    assert (workdir / "check.txt").read_text() == "same\n"  # the shell expanded the reference
    cmdline = (workdir / "cmdline.txt").read_text()
    assert "${DAGON_SECRET_API}" in cmdline and API not in cmdline  # never in argv
    # what the agent reported (retained result, run store) holds no value, whole, encoded or cut
    tail = doc["stderr_tail"]
    assert tail.count("***") >= 3, tail
    assert API not in tail and API[:12] not in tail
    assert base64.b64encode(API.encode()).decode().rstrip("=") not in tail
    # the captured logs `dagon logs` and the dashboard serve: masked on disk once the attempt ended
    stdout, stderr = ((workdir / ".dagon" / name).read_text() for name in ("stdout", "stderr"))
    assert stdout == "to stdout: ***\n", stdout
    assert API not in stderr and API[:12] not in stderr and stderr.count("***") >= 3, stderr
    everything = b"".join((await retained(deployment.url, "#")).values())  # all the broker retains
    deployment.stop_agent("edge")
    assert deployment.coordinator is not None
    store = sqlite3.connect(deployment.home / "runs.sqlite")
    dumped = "\n".join(store.iterdump())
    store.close()
    for value in (API, API[:12], OTHER, BROKER_PASSWORD):
        assert value.encode() not in everything
        assert value not in dumped


def test_state_files_are_private(deployment: Deployment) -> None:
    deployment.home.chmod(0o755)  # an existing, too open home is tightened
    deployment.start_coordinator()
    deployment.start_agent("edge")
    _run, out = deployment.submit(deployment.workflow("tiny", [("A", "true", {})]))
    assert out.returncode == 0, out.stderr
    edge = deployment.agent_home("edge")
    for home in (deployment.home, edge):
        assert stat.S_IMODE(home.stat().st_mode) == 0o700, home
        assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
    files = [
        deployment.home / "runs.sqlite",
        deployment.home / "keys" / "known_agents",
        deployment.home / "keys" / "coordinator.key",
        edge / "keys" / "agent.key",
        edge / "spool-edge.sqlite",
        edge / "replay-edge.sqlite",
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
