"""The `dagon` command line, run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parent.parent
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]
AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]


def dagon(*args: str, home: Path, timeout: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    environ.update(DAGON_HOME=str(home), COLUMNS="200", **env)
    return subprocess.run(
        [*DAGON, *args], capture_output=True, text=True, timeout=timeout, env=environ, cwd=ROOT, check=False
    )


def test_version(tmp_path: Path) -> None:
    out = dagon("--version", home=tmp_path)
    assert out.returncode == 0
    assert out.stdout.strip().startswith("dagon 0.")


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    out = dagon("run", "examples/taskflow/taskflow.py", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "succeeded" in out.stdout
    results = list((tmp_path / "scratch").glob("*/E-1/result.txt"))
    assert len(results) == 1
    lines = results[0].read_text().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("B-") and lines[2].startswith("C-")
    assert (tmp_path / "runs.sqlite").exists()


def test_run_fetches_the_final_outputs(tmp_path: Path) -> None:
    out = dagon("run", "examples/taskflow/taskflow.py", "--fetch-outputs", str(tmp_path / "results"), home=tmp_path)
    assert out.returncode == 0, out.stderr
    fetched = sorted(p.relative_to(tmp_path / "results").as_posix() for p in (tmp_path / "results").rglob("*.txt"))
    assert fetched == ["Taskflow-Demo/E/result.txt"]  # E is the only task no other task consumes
    (produced,) = (tmp_path / "scratch").glob("*/E-1/result.txt")
    assert (tmp_path / "results" / "Taskflow-Demo" / "E" / "result.txt").read_text() == produced.read_text()


def test_runs_lists_the_store(tmp_path: Path) -> None:
    assert dagon("runs", home=tmp_path).returncode == 2  # no store yet: a clear error
    assert dagon("run", "examples/taskflow/taskflow.py", home=tmp_path).returncode == 0
    out = dagon("runs", "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["workflow"] == "Taskflow-Demo" and row["state"] == "succeeded" and row["finished_at"]
    status = dagon("status", row["run"], "--json", home=tmp_path)
    assert json.loads(status.stdout)["counts"] == {"succeeded": 5}


def test_failed_workflow_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text(
        "import dagon\n"
        "wf = dagon.Workflow('fails')\n"
        "wf.shell('bad', 'echo broken-input >&2; exit 4')\n"
        "wf.shell('next', 'true', after=['bad'])\n"
    )
    out = dagon("run", str(script), home=tmp_path / "home")
    assert out.returncode == 1
    assert "bad" in out.stdout
    assert "exit code 4" in out.stdout
    assert "broken-input" in out.stdout
    assert "upstream_failed" in out.stdout


def test_invalid_workflow_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "cycle.py"
    script.write_text(
        "import dagon\n"
        "wf = dagon.Workflow('cyc')\n"
        "wf.shell('a', 'cat workflow:///b/x')\n"
        "wf.shell('b', 'cat workflow:///a/x')\n"
    )
    out = dagon("run", str(script), home=tmp_path / "home")
    assert out.returncode == 2
    assert "dependency cycle" in out.stderr
    assert not (tmp_path / "home" / "scratch").exists()


def test_dry_run_has_no_side_effects(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = dagon("run", "--dry-run", "examples/taskflow/taskflow.py", home=home)
    assert out.returncode == 0, out.stderr
    assert "5 task(s)" in out.stdout
    assert "stages 'output/f1.txt' from A" in out.stdout
    assert not home.exists()


@pytest.mark.mosquitto
def test_coordinator_agent_submit_status_agents(mosquitto: Any, tmp_path: Path) -> None:
    """Three homes as on three machines: keys are created and enrolled with the CLI only."""
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    init = dagon("keys", "init", home=tmp_path / "coord")
    assert init.returncode == 0, init.stderr
    coordinator_pub = tmp_path / "coord" / "keys" / "coordinator.pub"
    fingerprint = init.stdout.split("fingerprint ")[1].split()[0]
    enroll = subprocess.run(
        [*AGENT, "enroll", str(coordinator_pub), "--yes"],
        env=dict(env, DAGON_HOME=str(tmp_path / "agent")), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert enroll.returncode == 0, enroll.stderr
    assert fingerprint in enroll.stdout
    client = dagon("keys", "client", home=tmp_path / "cli")
    assert client.returncode == 0 and "client.pub" in client.stdout, client.stderr
    trust = dagon("keys", "trust-client", str(tmp_path / "cli" / "keys" / "client.pub"), home=tmp_path / "coord")
    assert trust.returncode == 0, trust.stderr
    # the client checks the coordinator's answers against its key
    pinned_coordinator = dagon("keys", "trust-coordinator", str(coordinator_pub), home=tmp_path / "cli")
    assert pinned_coordinator.returncode == 0 and fingerprint in pinned_coordinator.stdout, pinned_coordinator.stderr
    # the coordinator admits the agent only once its key is enrolled there
    key = subprocess.run(
        [*AGENT, "key"], env=dict(env, DAGON_HOME=str(tmp_path / "agent")), capture_output=True, text=True, check=True
    )
    (tmp_path / "agent.pub").write_text(key.stdout)
    pinned = dagon("keys", "trust-agent", "cli-agent", str(tmp_path / "agent.pub"), home=tmp_path / "coord")
    assert pinned.returncode == 0, pinned.stderr
    coord = subprocess.Popen(
        [*DAGON, "coordinator", "--broker", mosquitto.url],
        env=dict(env, DAGON_HOME=str(tmp_path / "coord")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent = subprocess.Popen(
        [*AGENT, "--broker", mosquitto.url, "--id", "cli-agent", "--labels", "site=lab"],
        env=dict(env, DAGON_HOME=str(tmp_path / "agent")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            out = dagon("agents", "--json", "--broker", mosquitto.url, home=tmp_path / "cli")
            rows = json.loads(out.stdout or "[]") if out.returncode == 0 else []
            if any(r["id"] == "cli-agent" for r in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        row = next(r for r in rows if r["id"] == "cli-agent")
        assert row["labels"] == {"site": "lab"}
        assert "process" in row["runtimes"]

        out = dagon(
            "submit", "examples/taskflow/taskflow.py", "--broker", mosquitto.url, "--wait", home=tmp_path / "cli"
        )
        assert out.returncode == 0, out.stderr
        run_id = out.stdout.splitlines()[0].strip()
        status = dagon("status", run_id, "--json", "--broker", mosquitto.url, home=tmp_path / "cli")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["state"] == "succeeded"
        assert doc["counts"] == {"succeeded": 5}
    finally:
        stop_process(agent)
        stop_process(coord)
    assert coord.returncode == 0


def test_dev_broker_serves_a_whole_run_insecure(tmp_path: Path) -> None:
    """`dagon broker` (embedded amqtt, MQTT 3.1.1) + a `dagon-agent --insecure` + `dagon run --broker --insecure`."""
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    env.update(DAGON_MQTT_PROTOCOL="3.1.1")
    broker = subprocess.Popen(
        [*DAGON, "broker", "--port", port], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"mqtt://127.0.0.1:{port}"
    agent = None
    try:
        wait_port(int(port))
        agent = subprocess.Popen(
            [*AGENT, "--broker", url, "--id", "dev-agent", "--insecure"],
            env=dict(env, DAGON_HOME=str(tmp_path / "agent")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out = dagon(
            "run", "examples/taskflow/taskflow.py", "--broker", url, "--insecure", home=tmp_path / "cli",
            DAGON_MQTT_PROTOCOL="3.1.1",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "dev-agent" in out.stdout
        assert "INSECURE MODE" in out.stderr
        assert not (tmp_path / "cli" / "keys").exists()
    finally:
        stop_process(agent)
        stop_process(broker)
    assert broker.returncode == 0


def test_coordinator_configured_by_its_file_alone(mosquitto: Any, tmp_path: Path) -> None:
    """`dagon coordinator --config FILE`: broker, id and insecure come from the TOML file (docs/configuration.md)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_INSECURE")}
    config = tmp_path / "coordinator.toml"
    config.write_text(f'broker = "{mosquitto.url}"\nid = "filed"\ninsecure = true\nheartbeat_ttl = 20\n')
    bad = dagon("coordinator", "--config", str(config.with_name("typo.toml")), home=tmp_path / "coord")
    assert bad.returncode == 2 and "typo.toml does not exist (check --config)" in bad.stderr
    config.with_name("typo.toml").write_text("hearbeat_ttl = 20\n")
    bad = dagon("coordinator", "--config", str(config.with_name("typo.toml")), home=tmp_path / "coord")
    assert bad.returncode == 2 and "unknown setting(s) ['hearbeat_ttl']" in bad.stderr

    coord = subprocess.Popen(
        [*DAGON, "coordinator", "--config", str(config)],
        env=dict(env, DAGON_HOME=str(tmp_path / "coord")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent = subprocess.Popen(
        [*AGENT, "--broker", mosquitto.url, "--id", "filed-agent", "--insecure"],
        env=dict(env, DAGON_HOME=str(tmp_path / "agent")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # A submission reaches only a coordinator that is listening: wait for its retained status to say online.
        status = [
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-C", "1", "-W", "2",
            "-t", "dagon/v1/coordinator/filed/status",
        ]  # fmt: skip
        deadline = time.monotonic() + 30
        while '"online":true' not in subprocess.run(status, capture_output=True, text=True, check=False).stdout:
            assert time.monotonic() < deadline, "the coordinator configured by its file never came online"
            assert coord.poll() is None, "the coordinator exited"
        out = dagon(
            "submit", "examples/taskflow/taskflow.py", "--broker", mosquitto.url, "--coordinator", "filed",
            "--insecure", "--wait", home=tmp_path / "cli",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "filed-agent" in out.stdout
        assert not (tmp_path / "coord" / "keys").exists()  # insecure: no key was created
        assert (tmp_path / "coord" / "runs.sqlite").exists()
    finally:
        stop_process(agent)
        stop_process(coord)
    assert coord.returncode == 0


def test_errors_are_never_wrapped_whatever_the_path_length(tmp_path: Path) -> None:
    home = tmp_path / ("a-long-folder-name-" * 8) / "home"
    home.mkdir(parents=True)
    from dagon.core import RunStore

    RunStore(home / "runs.sqlite").close()  # an empty run store: "no run 'nope'"
    out = subprocess.run(
        [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())", "report", "nope"],
        env={**os.environ, "DAGON_HOME": str(home), "COLUMNS": "80"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and str(home) in line and "dagon runs" in line, out.stderr
