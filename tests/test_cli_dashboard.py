"""``--ui-port`` on the real command line: ``dagon coordinator`` and ``dagon run`` as subprocesses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from _broker import free_port, stop_process
from test_cli import DAGON, ROOT, dagon


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # loopback only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_coordinator_serves_the_dashboard_with_its_token(mosquitto: Any, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    port = free_port()
    log = tmp_path / "coordinator.log"
    with log.open("wb") as out:
        coord = subprocess.Popen(
            [*DAGON, "coordinator", "--broker", mosquitto.url, "--ui-port", str(port)],
            env=dict(env, DAGON_HOME=str(tmp_path / "coord")), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "dashboard (read-only)" not in log.read_text() and coord.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        printed = log.read_text()
        token_file = tmp_path / "coord" / "ui-token"
        token = token_file.read_text().strip()
        assert f"http://127.0.0.1:{port}/?token={token}" in printed, printed
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert _get(f"http://127.0.0.1:{port}/api/info")[0] == 401
        status, body = _get(f"http://127.0.0.1:{port}/api/info", token)
        assert status == 200 and json.loads(body)["control"] is False
    finally:
        stop_process(coord)
    assert coord.returncode == 0


def test_ui_flags_are_checked_before_anything_starts(tmp_path: Path) -> None:
    out = dagon("coordinator", "--broker", "mqtt://127.0.0.1:1", "--ui-allow-control", home=tmp_path)
    assert out.returncode == 2 and "--ui-allow-control needs --ui-port" in out.stderr
    out = dagon("coordinator", "--broker", "mqtt://127.0.0.1:1", "--ui-port", "70000", home=tmp_path)
    assert out.returncode == 2 and "ui_port must be a port number" in out.stderr
    out = dagon("run", "examples/taskflow/taskflow.py", "--ui-host", "0.0.0.0", home=tmp_path)
    assert out.returncode == 2 and "--ui-host needs --ui-port" in out.stderr


def test_dagon_run_prints_the_dashboard_of_its_coordinator(tmp_path: Path) -> None:
    out = dagon("run", "examples/taskflow/taskflow.py", "--ui-port", "0", home=tmp_path)
    assert out.returncode == 0, out.stderr
    token = (tmp_path / "ui-token").read_text().strip()
    assert f"/?token={token}" in out.stderr and "dashboard (read-only): http://127.0.0.1:" in out.stderr
