"""DAGonStar-style scripts run unchanged, as subprocesses, on the embedded default and on Mosquitto."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

from ._scripts import DATAFLOW, FAILING, PARALLEL, ROOT, ini, run_script, start_agent, write

MAP_GATHER = ROOT / "examples" / "dataflow" / "map-gather.py"


def f3_lines(scratch: Path) -> list[str]:
    """D's f3.txt: in ``<run>/D-1`` (dagon's layout) or ``<epoch ms>-D`` (DAGonStar's, with a dagon.ini)."""
    (found,) = [p for p in scratch.rglob("f3.txt") if re.fullmatch(r"D-1|[0-9]{13,}-D", p.parent.name)]
    return found.read_text().splitlines()


def test_dataflow_demo_with_dagon_ini_on_the_embedded_default(tmp_path: Path) -> None:
    work = tmp_path / "work"
    scratch = tmp_path / "scratch"
    ini(work / "dagon.ini", scratch=scratch, run_base="demo-%Y-__MILLIS__")
    out = run_script(DATAFLOW, cwd=work, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    lines = f3_lines(scratch)
    assert len(lines) == 4 and lines[1] == lines[3]  # random, host, random, host
    assert out.stdout.strip() == str([line + "\n" for line in lines])
    (run_dir,) = scratch.iterdir()  # run_base: strftime expanded, __MILLIS__ replaced
    year, millis = run_dir.name.split("-")[1:]
    assert len(year) == 4 and millis.isdigit() and len(millis) >= 13
    # DAGonStar's layout: <scratch_dir_base>/<run_base>/<epoch ms>-<task>
    tasks = sorted(re.sub(r"^[0-9]{13,}-", "", p.name) for p in run_dir.iterdir() if not p.name.startswith("."))
    assert tasks == ["A", "B", "C", "D"]
    doc = json.loads((work / "dataflow-demo.json").read_text())
    assert doc["tasks"]["D"]["prevs"] == ["B", "C"] and doc["tasks"]["A"]["type"] == "batch"
    # The ini's logging sections did not reconfigure logging, and its secrets were not echoed.
    assert "INI-LOGGING" not in out.stderr
    assert "hunter2" not in out.stdout + out.stderr
    assert not (tmp_path / "home" / "scratch").exists()


def test_missing_dagon_ini_means_defaults(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = run_script(DATAFLOW, cwd=work, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert len(f3_lines(tmp_path / "home" / "scratch")) == 4


def test_failed_task_is_reported_with_name_exit_code_and_stderr(tmp_path: Path) -> None:
    script = write(tmp_path / "failing.py", FAILING)
    out = run_script(script, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 1
    assert "not reached" not in out.stdout
    assert "TaskFailed" in out.stderr
    assert "B: exit code 3: B could not parse in.txt" in out.stderr
    assert "C: upstream task 'B' failed" in out.stderr


def test_map_gather_example_on_the_embedded_default(tmp_path: Path) -> None:
    out = run_script(MAP_GATHER, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5050"
    scratch = tmp_path / "home" / "scratch"
    assert sorted(p.name for p in scratch.glob("*/count_*")) == [f"count_chunk_a{c}-1" for c in "abcd"]
    values = sorted(int(p.read_text()) for p in scratch.glob("*/scale_*/value.txt"))
    assert values == [10, 20, 20, 30, 40, 60]


def test_remove_dir_deletes_intermediate_scratch(tmp_path: Path) -> None:
    work = tmp_path / "work"
    scratch = tmp_path / "scratch"
    ini(work / "dagon.ini", scratch=scratch, remove_dir=True)
    out = run_script(DATAFLOW, cwd=work, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    left = [p.name for p in scratch.iterdir() if not p.name.startswith(".")]
    assert len(left) == 1 and re.fullmatch(r"[0-9]{13,}-D", left[0])
    assert len(f3_lines(scratch)) == 4


def test_parallel_mode_maps_over_the_producers_files(tmp_path: Path) -> None:
    script = write(tmp_path / "parallel.py", PARALLEL)
    out = run_script(script, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    values, finished = out.stdout.strip().splitlines()
    assert values == "['10', '20', '30']"
    assert finished == "['A', 'B', 'C']"
    assert sorted(p.name for p in (tmp_path / "home" / "scratch").glob("*/B_*")) == ["B_f1-1", "B_f2-1", "B_f3-1"]


def test_a_runtime_no_agent_offers_fails_before_anything_runs(tmp_path: Path) -> None:
    script = write(
        tmp_path / "nomad.py",
        "from dagon import Workflow\n"
        "from dagon.task import DagonTask, TaskType\n"
        "wf = Workflow('Nomad-Demo')\n"
        "wf.add_task(DagonTask(TaskType.BATCH, 'A', 'echo a > a.txt'))\n"
        "wf.add_task(DagonTask(TaskType.NOMAD, 'B', 'cat workflow:///A/a.txt', image='busybox', cpu=500))\n"
        "wf.make_dependencies()\n"
        "wf.run()\n",
    )
    out = run_script(script, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 1
    assert "no online agent offers runtime 'nomad' (needed by task(s) B)" in out.stderr
    assert [p.name for p in (tmp_path / "home").glob("scratch/*")] == [".dagon-scratch"]  # no task directory


def test_ssh_variant_fails_clearly_when_no_agent_offers_ssh(tmp_path: Path) -> None:
    script = write(
        tmp_path / "remote.py",
        "from dagon import Workflow\n"
        "from dagon.task import DagonTask, TaskType\n"
        "wf = Workflow('Remote-Demo')\n"
        "wf.add_task(DagonTask(TaskType.BATCH, 'R', 'hostname > h.txt', ip='127.0.0.1', ssh_username='dagon',"
        " keypath='/nonexistent/id_ed25519'))\n"
        "wf.make_dependencies()\n"
        "wf.run()\n",
    )
    out = run_script(script, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 1
    message = " ".join(out.stderr.split())
    assert "task(s) R have ip=127.0.0.1: no online agent announces that address" in message
    assert "no agent offers the 'ssh' runtime" in message and "--runtimes ssh" in message


@pytest.mark.mosquitto
def test_scripts_run_on_a_real_brokers_agents(mosquitto: Any, tmp_path: Path) -> None:
    agent = start_agent(mosquitto.url, tmp_path / "agent", "compat-agent")
    try:
        work = tmp_path / "work"
        work.mkdir()
        # dagon.ini's scratch_dir_base is about this machine's embedded agent: with a
        # broker the agents' own scratch directories are used.
        ini(work / "dagon.ini", scratch=tmp_path / "unused")
        out = run_script(DATAFLOW, cwd=work, home=tmp_path / "client", DAGON_BROKER=mosquitto.url)
        assert out.returncode == 0, out.stderr
        assert len(f3_lines(tmp_path / "agent" / "scratch")) == 4
        assert not (tmp_path / "unused").exists()

        # Dynamic fan-out decided from the producer's manifest, on the broker's agent.
        out = run_script(MAP_GATHER, cwd=work, home=tmp_path / "client", DAGON_BROKER=mosquitto.url)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "5050"
        assert len(list((tmp_path / "agent" / "scratch").glob("Map-Gather-*/count_chunk_a?-1/n.txt"))) == 4

        failing = write(tmp_path / "failing.py", FAILING)
        out = run_script(failing, cwd=tmp_path, home=tmp_path / "client", DAGON_BROKER=mosquitto.url)
        assert out.returncode == 1
        assert "B: exit code 3: B could not parse in.txt" in out.stderr
    finally:
        stop_process(agent)
    shutil.rmtree(tmp_path / "agent" / "scratch", ignore_errors=True)
