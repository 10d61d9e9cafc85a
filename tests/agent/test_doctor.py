"""``dagon-agent doctor`` against a real Mosquitto: the table, enrollment, clock skew from the coordinators'
retained status, an unreachable broker, and that looking around creates nothing."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import free_port, missing
from _keys import COORDINATOR

from dagon.agent import load_agent_config
from dagon.agent._doctor import broker_checks
from dagon.cli._cmd_device import doctor_main
from dagon.protocol import public_key_line, topics

pytestmark = pytest.mark.mosquitto


def retain(url: str, topic: str, doc: dict[str, Any]) -> None:
    binary = shutil.which("mosquitto_pub") or missing("mosquitto_pub not installed; run .ci/setup")
    port = url.rsplit(":", 1)[1]
    subprocess.run([binary, "-h", "127.0.0.1", "-p", port, "-t", topic, "-m", json.dumps(doc), "-r"], check=True)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("DAGON_BROKER", "DAGON_AGENT_ID", "DAGON_SCRATCH", "DAGON_DEVICES", "DAGON_POWER_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("DAGON_HOME", str(home))
    return home


def rows(out: str) -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for line in out.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and not line.startswith(" "):
            table[parts[0]] = (parts[1], parts[2])
    return table


def test_doctor_table_and_enrollment(
    mosquitto: Any, clean_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'devices = ["serial:{tmp_path}/ttyACM0"]\nscratch = "{tmp_path}/scratch"\n')
    assert doctor_main(["--config", str(config), "--broker", mosquitto.url]) == 1
    table = rows(capsys.readouterr().out)
    assert table["broker"][0] == "ok" and "connected in" in table["broker"][1]
    assert table["enrollment"][0] == "FAIL" and "dagon-agent enroll" in table["enrollment"][1]
    assert table["keys"][0] == "--" and "created at the first start" in table["keys"][1]
    assert table["platform"][0] == "ok" and table["platform"][1].startswith(platform.machine())
    assert table["sensors"][1].startswith(f"serial:{tmp_path}/ttyACM0")
    assert table["scratch"][0] == "ok" and "(created at first start)" in table["scratch"][1]
    assert table["runtimes"][1].startswith("process, python, sensor, actuator")
    assert table["power"][0] in ("ok", "WARN")  # a VM has no meter: the CPU model, said to be modelled
    assert table["coordinators"][0] == "WARN" and "none online" in table["coordinators"][1]
    assert not clean_env.exists() and not (tmp_path / "scratch").exists()  # looking created nothing

    trusted = clean_env / "keys" / "trusted"
    trusted.mkdir(parents=True)
    (trusted / "main.pub").write_text(public_key_line(COORDINATOR.public_key, "coordinator"))
    retain(mosquitto.url, topics.coordinator_status("main"),
           {"schema": "dagon.coordinator/1", "id": "main", "online": True, "since": time.time() - 30})  # fmt: skip
    assert doctor_main(["--config", str(config), "--broker", mosquitto.url, "--json"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["enrollment"]["status"] == "ok" and "main.pub" in checks["enrollment"]["detail"]
    assert checks["coordinators"]["detail"] == "online: main"
    assert "no coordinator clock found ahead of ours" in checks["clock"]["detail"]


async def test_a_clock_behind_the_coordinator(mosquitto: Any, clean_env: Path) -> None:
    retain(mosquitto.url, topics.coordinator_status("main"),
           {"schema": "dagon.coordinator/1", "id": "main", "online": True, "since": 1_800_000_000.0})  # fmt: skip
    config = load_agent_config(config_file=None, env={"DAGON_HOME": str(clean_env), "DAGON_AGENT_ID": "x"},
                               flags={"broker": mosquitto.url})  # fmt: skip
    # This machine believes it is 2026-12-01 … while the coordinator started an hour "later".
    checks = {c.name: c for c in await broker_checks(config, now=lambda: 1_800_000_000.0 - 3600)}
    assert checks["clock"].status == "fail"
    detail = checks["clock"].detail
    assert "behind coordinator main by at least 3600 s" in detail and "refused" in detail
    checks = {c.name: c for c in await broker_checks(config, now=lambda: 1_800_000_000.0 + 5)}
    assert checks["clock"].status in ("ok", "warn") and "ahead of ours" in checks["clock"].detail


def test_an_unreachable_broker(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor_main(["--broker", f"mqtt://127.0.0.1:{free_port()}"]) == 1
    table = rows(capsys.readouterr().out)
    assert table["broker"][0] == "FAIL" and "could not connect" in table["broker"][1]
    assert doctor_main(["--broker", "ftp://nowhere"]) == 1
    assert rows(capsys.readouterr().out)["broker"][0] == "FAIL"
