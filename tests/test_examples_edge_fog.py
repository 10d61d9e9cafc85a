"""``examples/edge-fog/simulate.py``, run briefly as a user would: a pty Arduino, a real Mosquitto started by
the script, two real ``dagon-agent`` processes, preprocessing as a process, in a real dockerd and with a real
``ch-run``, and a MongoDB export into nx-27017 (a wire-protocol emulation)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _broker import MOSQUITTO_MISSING, missing, mosquitto_binary
from _containers import CHARLIECLOUD_MISSING, DOCKER_MISSING, Dockerd, dockerd_binary
from _mongo import NxMongo

ROOT = Path(__file__).resolve().parents[1]
SIMULATE = ROOT / "examples" / "edge-fog" / "simulate.py"


def test_dashboard_uses_exported_metrics_and_annotates_runs() -> None:
    dash = json.loads((SIMULATE.parent / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    used = {m for e in exprs for m in re.findall(r"\bdagon_[a-z_]+", e)}
    sources = (ROOT / "core" / "_metrics.py").read_text() + (ROOT / "agent" / "_exporter.py").read_text()
    exported = {m.removesuffix("_total").removesuffix("_bucket") for m in used}
    assert all(f'"{m}"' in sources for m in exported), exported
    assert {a["name"] for a in dash["annotations"]["list"]} == {"run started", "run ended"}
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


@pytest.mark.slow
@pytest.mark.mosquitto
@pytest.mark.mongo
@pytest.mark.docker
@pytest.mark.charliecloud
def test_edge_fog_simulation(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        missing(MOSQUITTO_MISSING)
    if shutil.which("ch-run") is None or dockerd_binary() is None:
        missing(f"{CHARLIECLOUD_MISSING}; {DOCKER_MISSING}")
    engine = Dockerd(binary=dockerd_binary() or "", workdir=tmp_path / "dockerd")  # the script imports its image
    nx = NxMongo(tmp_path / "nx")
    try:
        engine.start()
        nx.start()
        out = subprocess.run(
            [sys.executable, str(SIMULATE), "--duration", "2", "--runtimes", "process,docker,charliecloud", "--json",
             "--mongo", nx.url, "--workdir", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
            env={**os.environ, "DOCKER_HOST": engine.url},
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        rows = {r["runtime"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])}
        assert set(rows) == {"process", "docker", "charliecloud"}
        for row in rows.values():
            assert row["success"] and row["readings"] >= 1, row
            assert row["energy_wh"] > 0 and isinstance(row["measured"], bool)
            # Per task, from the fog agent's power source, shared by CPU use: the export (a Python process) always
            # has some; an awk run may take 0 measurable CPU ticks, and container CPU is not the agent's to count.
            assert row["task_energy"]["export"]["source"]
        assert "runtime" in out.stdout and "overhead (s)" in out.stdout and "apptainer (original)" in out.stdout
        assert "modelled" in out.stdout or "measured" in out.stdout

        from pymongo import MongoClient

        client: MongoClient[dict[str, Any]]
        with MongoClient(nx.url, serverSelectionTimeoutMS=5000) as client:
            found: list[dict[str, Any]] = list(client["dagon_edge_fog"]["dht_runs"].find())
        docs = {d["execution_id"]: d for d in found}
        assert set(docs) == {r["run"] for r in rows.values()}
        for row in rows.values():
            doc = docs[row["run"]]
            assert doc["summary"]["count"] == row["readings"] == doc["raw_data_count"]
            assert 10 <= doc["summary"]["mean_temp_c"] <= 35 and doc["summary"]["min_humidity"] > 0
            assert doc["energy"]["export"] is not None  # stored afterwards, as the original did
    finally:
        nx.stop()
        engine.stop()


@pytest.mark.slow
@pytest.mark.mosquitto
def test_without_mongodb_the_export_is_skipped_with_a_message(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        missing(MOSQUITTO_MISSING)
    out = subprocess.run(
        [sys.executable, str(SIMULATE), "--duration", "1", "--runtimes", "process", "--json",
         "--mongo", "mongodb://127.0.0.1:9/?directConnection=true&serverSelectionTimeoutMS=500"],
        capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MongoDB: export skipped: no MongoDB answers at" in out.stdout
    (row,) = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["success"] and row["note"] == "export skipped (no MongoDB)"
