"""A dry run validates and prints the plan with zero side effects: no scratch or home
directories, nothing on the broker that makes an agent act (watched by a real
``mosquitto_sub`` on ``dagon/#`` while a real agent is connected)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import missing, stop_process

from ._scripts import DATAFLOW, ini, run_cli, run_script, start_agent, write

DRY = """\
from dagon import Workflow
from dagon.task import DagonTask, TaskType

workflow = Workflow("Dry-Demo")
a = DagonTask(TaskType.BATCH, "A", "mkdir output; hostname > output/f1.txt")
b = DagonTask(TaskType.DOCKER, "B", "cat workflow:///A/output/f1.txt > f2.txt", image="busybox:1.36")
c = DagonTask(TaskType.CLOUD, "C", "true", provider="EC2", key_options={"key_path": "/k", "password": "pw-hunter2"})
workflow.add_task(a)
workflow.add_task(b)
workflow.add_task(c)
workflow.make_dependencies()
workflow.set_dry(True)
print("result:", workflow.run(), workflow.get_dry())
"""


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_set_dry_on_the_embedded_default_touches_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    ini(work / "dagon.ini", scratch=tmp_path / "scratch", run_base="%Y-__MILLIS__")
    script = write(work / "dry.py", DRY)
    before = tree(tmp_path)
    out = run_script(script, cwd=work, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert "workflow 'Dry-Demo': 3 task(s), valid" in out.stdout
    assert "options: key_options=<hidden>, provider='EC2'" in out.stdout
    assert "hunter2" not in out.stdout + out.stderr
    assert "B  [docker] after: A; runs on the embedded agent on this machine (needs runtime 'docker'" in out.stdout
    assert "options: image='busybox:1.36'" in out.stdout
    assert "stages 'output/f1.txt' from A (workflow:///A/output/f1.txt)" in out.stdout
    assert f"scratch directories under {tmp_path / 'scratch'}/%Y-__MILLIS__" in out.stdout
    assert "result: None True" in out.stdout
    assert tree(tmp_path) == before  # no home, no scratch, no run store


@pytest.mark.mosquitto
def test_dry_runs_publish_nothing_that_makes_an_agent_act(mosquitto: Any, tmp_path: Path) -> None:
    sub_bin = shutil.which("mosquitto_sub")
    if sub_bin is None:
        missing("mosquitto_sub not installed; run .ci/setup")
    agent = start_agent(mosquitto.url, tmp_path / "agent", "dry-agent", coordinator_home=tmp_path / "operator")
    topics_file = tmp_path / "topics.txt"
    sub = None
    try:
        deadline = time.monotonic() + 20
        with topics_file.open("w") as sink:
            # stdbuf: a line per message reaches the file at once (stdout to a file is block-buffered).
            sub = subprocess.Popen(
                ["stdbuf", "-oL", sub_bin, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-t", "dagon/#", "-F", "%t"],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        # The subscriber is live (and the agent online) once the agent's status reached it.
        while "dry-agent/status" not in topics_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "/agents/dry-agent/status" in topics_file.read_text(), topics_file.read_text()

        work = tmp_path / "work"
        work.mkdir()
        script = write(work / "dry.py", DRY)
        out = run_script(script, cwd=work, home=tmp_path / "client", DAGON_BROKER=mosquitto.url)
        assert out.returncode == 0, out.stderr
        # The plan names who could run what, from the agents' retained status (read only).
        assert f"broker {mosquitto.url}: 1 agent(s) online" in out.stdout
        assert "A  [process] after: -; runs on agent dry-agent" in out.stdout
        assert "B  [docker] after: A; runs on NO online agent can run it now (dry-agent: runtime 'docker'" in out.stdout

        out = run_cli("run", "--dry-run", str(DATAFLOW), cwd=work, home=tmp_path / "client", DAGON_BROKER=mosquitto.url)
        assert out.returncode == 0, out.stderr
        assert "workflow 'DataFlow-Demo': 4 task(s), valid" in out.stdout
        assert "D  [process] after: B, C" in out.stdout
        time.sleep(1.0)  # anything published would have reached the subscriber by now
    finally:
        stop_process(sub)
        stop_process(agent)
    seen = [t for t in topics_file.read_text().splitlines() if t.strip()]
    acting = [t for t in seen if t.endswith(("/tasks", "/control")) or "/runs/" in t or "/coordinator/" in t]
    assert acting == [], acting
    assert not (tmp_path / "client").exists()
    assert tree(tmp_path / "agent" / "scratch") == [".dagon-scratch"]  # the agent marked its root, ran nothing
