"""`dagon coordinator --mongo-url`: real processes (coordinator, agent, Mosquitto, nx-27017)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _broker import free_port, stop_process, wait_port
from _mongo import NxMongo
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parent.parent
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]
AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGON_BROKER", "DAGON_MONGO"))}
    env.update(DAGON_HOME=str(home), COLUMNS="200", **extra)
    return env


def _coordinator(*args: str, home: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [*DAGON, "coordinator", "--broker", "mqtt://127.0.0.1:1", "--insecure", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(home), check=False)


def test_a_bad_mongo_url_is_refused_without_showing_its_password(tmp_path: Path) -> None:
    out = _coordinator("--mongo-url", "http://dagon:s3cr3t-pw@db.example:27017/", home=tmp_path)
    assert out.returncode != 0
    assert "not a MongoDB URL" in out.stderr and "mongodb://" in out.stderr
    assert "s3cr3t-pw" not in out.stderr + out.stdout
    assert "dagon:***@db.example" in out.stderr


def test_mongo_db_without_url_is_an_error(tmp_path: Path) -> None:
    out = _coordinator("--mongo-db", "metrics", home=tmp_path)
    assert out.returncode != 0 and "need --mongo-url" in out.stderr


def test_mongo_buffer_must_be_positive(tmp_path: Path) -> None:
    out = _coordinator("--mongo-url", "mongodb://127.0.0.1:1/", "--mongo-buffer", "0", home=tmp_path)
    assert out.returncode != 0 and "--mongo-buffer 0: must be at least 1" in out.stderr


def test_without_pymongo_the_error_says_what_to_install(tmp_path: Path) -> None:
    # Python treats a None entry in sys.modules as "not installed"
    code = "import sys; sys.modules['pymongo'] = None; from dagon.cli import main; raise SystemExit(main())"
    cmd = [sys.executable, "-c", code, "coordinator", "--broker", "mqtt://127.0.0.1:1", "--insecure"]
    env = _env(tmp_path, DAGON_MONGO_URL="mongodb://127.0.0.1:1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert out.returncode != 0
    assert "pip install 'dagon-engine[mongo]'" in out.stderr


async def _documents(url: str, run: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        db = client["dagon_cli"]
        run_doc = await db.runs.find_one({"_id": run})
        tasks = await db.tasks.find({"run_id": run}).to_list()
        telemetry = await db.telemetry.count_documents({"agent": "mongo-agent"})
        return run_doc, tasks, telemetry
    finally:
        await client.close()


@pytest.mark.mosquitto
@pytest.mark.mongo
def test_coordinator_writes_a_submitted_run_to_mongodb(mosquitto: Any, tmp_path: Path) -> None:
    nx = NxMongo(tmp_path / "nx")
    metrics_port = free_port()
    coord = agent = None
    coord_log = (tmp_path / "coord.log").open("wb")
    try:
        nx.start()
        coord = subprocess.Popen(
            [*DAGON, "coordinator", "--broker", mosquitto.url, "--insecure", "--mongo-db", "dagon_cli",
             "--metrics-port", str(metrics_port)],
            env=_env(tmp_path / "coord", DAGON_MONGO_URL=nx.url), stdout=subprocess.DEVNULL,
            stderr=coord_log,
        )  # fmt: skip
        agent = subprocess.Popen(
            [*AGENT, "--broker", mosquitto.url, "--insecure", "--id", "mongo-agent"],
            env=_env(tmp_path / "agent", DAGON_TELEMETRY_INTERVAL="0.3", DAGON_POWER_SOURCE="model"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(metrics_port, timeout=20)
        submit = subprocess.run(
            [*DAGON, "submit", "examples/taskflow/taskflow.py", "--broker", mosquitto.url, "--insecure", "--wait"],
            capture_output=True, text=True, timeout=90, env=_env(tmp_path / "cli"), cwd=ROOT, check=False,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stderr
        run = submit.stdout.splitlines()[0].strip()
        deadline = time.monotonic() + 20
        while True:
            run_doc, tasks, telemetry = asyncio.run(_documents(nx.url, run))
            done = run_doc is not None and run_doc.get("state") == "succeeded" and len(tasks) == 5 and telemetry
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert run_doc is not None and run_doc["state"] == "succeeded" and run_doc["counts"] == {"succeeded": 5}
        assert sorted(t["task"] for t in tasks) == ["A", "B", "C", "D", "E"]
        assert all(t["agent"] == "mongo-agent" and t["exit_code"] == 0 for t in tasks)
        assert telemetry >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert "dagon_mongo_up 1.0" in text
        written = next(line for line in text.splitlines() if line.startswith("dagon_mongo_written_documents_total"))
        assert float(written.split()[-1]) >= 6
        assert 'dagon_agent_cpu_percent{agent="mongo-agent"}' in text
    finally:
        stop_process(agent)
        stop_process(coord)
        nx.stop()
        coord_log.close()
    assert coord is not None and coord.returncode == 0, (tmp_path / "coord.log").read_text()[-2000:]
