"""Scripts written from DAGonStar's documented API and examples, run as users run them.

Each runs as a real subprocess, with ``python FILE.py`` and with ``dagon run FILE.py``
(which must behave like ``python``), on the embedded default; a Mosquitto test runs
them on agent processes. The scripts are in ``scripts/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

from ._scripts import run_cli, run_script, start_agent, write

SCRIPTS = Path(__file__).parent / "scripts"
MODES = ["python", "dagon run"]


def run(mode: str, name: str, cwd: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    if mode == "python":
        return run_script(SCRIPTS / f"{name}.py", cwd=cwd, home=home, timeout=90, **env)
    return run_cli("run", str(SCRIPTS / f"{name}.py"), cwd=cwd, home=home, timeout=90, **env)


@pytest.mark.parametrize("mode", MODES)
def test_workflow_attributes_of_the_original(mode: str, tmp_path: Path) -> None:
    out = run(mode, "envapp", tmp_path / "work", tmp_path / "home")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["base"] == f"scratch-here {tmp_path / 'work' / 'scratch-here'}"  # flat config = [batch]
    assert lines["id"].startswith(("before 0", "after True"))
    assert lines["tasks"] == "['Setup', 'Use']" and lines["found"] == "Use"
    assert lines["status"] == "['FINISHED', 'FINISHED']"
    (used,) = (tmp_path / "work" / "scratch-here").glob("[0-9]*-Use/used.txt")  # DAGonStar's layout
    assert used.read_text() == "ready\n"


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_keeps_files_as_workflow_task_path_and_resumes(mode: str, tmp_path: Path) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    out = run(mode, "checkpoint_demo", work, home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['b', 'a', 'a']"
    (kept,) = home.glob("scratch/DataFlow-Checkpoint-*/Checkpoint_1-1")
    assert (kept / "DataFlow-Checkpoint" / "D" / "f3.txt").read_text() == "b\na\n"
    assert (kept / "DataFlow-Checkpoint" / "A" / "output" / "f1.txt").read_text() == "a\n"
    run_id = json.loads((work / "last_run.json").read_text())["run"]
    again = run(mode, "checkpoint_demo", work, home)  # resumes the recorded run: nothing left to run
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == "['b', 'a', 'a']"
    assert json.loads((work / "last_run.json").read_text())["run"] == run_id
    assert len(list(home.glob("scratch/DataFlow-Checkpoint-*"))) == 1


def test_a_checkpoint_of_something_else_than_references_is_refused(tmp_path: Path) -> None:
    script = write(
        tmp_path / "bad_checkpoint.py",
        "from dagon import Workflow\nfrom dagon.task import DagonTask, TaskType\n"
        "wf = Workflow('Bad')\nwf.add_task(DagonTask(TaskType.CHECKPOINT, 'K', 'echo keep > k.txt'))\n",
    )
    out = run_script(script, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 1
    assert "checkpoint task 'K': its command is the list of files to keep, each a workflow:// reference" in out.stderr


@pytest.mark.parametrize("mode", MODES)
def test_original_modules_classes_and_positional_options(mode: str, tmp_path: Path) -> None:
    out = run(mode, "module_classes", tmp_path, tmp_path / "home")
    assert out.returncode == 0, out.stderr
    plan = out.stdout
    assert "S  [slurm] after: A" in plan and "options: ntasks=5, partition='testing'" in plan
    assert "options: ntasks=2, partition='debug'" in plan
    assert "options: instance_name='dagonTaskC', key_options=<hidden>, provider='ec2', stop_instance=True" in plan
    assert "options: instance_id='i-0123', key_options=<hidden>, provider='ec2'" in plan
    assert "D  [docker] after: A" in plan and "P  [apptainer]" in plan and "K  [kubernetes]" in plan
    assert "options: cpu_mhz=500, image='ubuntu:22.04'" in plan  # NOMAD cpu (MHz) by name
    assert "K1  [process] after: A" in plan
    assert "classes: Batch, Slurm, DagonTask, DockerTask, DagonTask, CloudTask, ApptainerTask" in plan
    assert "'volume' is not used" in out.stderr  # accepted, and the user is told what dagon does instead
    assert not (tmp_path / "home").exists()  # a dry run has no side effect


@pytest.mark.parametrize("mode", MODES)
def test_runtimes_no_agent_offers_are_refused_before_anything_runs(mode: str, tmp_path: Path) -> None:
    out = run(mode, "refused_runtimes", tmp_path, tmp_path / "home")
    assert out.returncode == (1 if mode == "python" else 2)  # dagon run: an error raised by the script is 2
    message = " ".join(out.stderr.split())
    assert "no online agent offers runtime 'kubernetes' (needed by task(s) Cloud)" in message
    assert "runtime 'nomad' (needed by task(s) Fog)" in message
    assert not list((tmp_path / "home").glob("scratch/Edge-Fog-Nomad-*"))


@pytest.mark.parametrize("mode", MODES)
def test_meta_workflow_in_one_process(mode: str, tmp_path: Path) -> None:
    out = run(mode, "transversal_local", tmp_path, tmp_path / "home")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "owner of G: wf2-local G"
    assert lines[1] == "wf command: cat workflow:///E/e.txt workflow:///C/f2.txt > f3.txt"
    assert lines[-1] == "['from-E', 'from-C', 'from-A']"
    doc = json.loads((tmp_path / "transversal-local.json").read_text())
    assert sorted(doc["tasks"]) == ["A", "C", "E", "G"] and doc["name"] == "Transversal-Local"
    # DAG_TPS keeps every task directory unless the ini says remove_dir (DAGonStar's default)
    assert len(list((tmp_path / "home").glob("scratch/wf1-local-*/A-1/output/f1.txt"))) == 1


def test_a_script_that_catches_its_failed_run_runs_once(tmp_path: Path) -> None:
    count = tmp_path / "count"
    for mode in MODES:
        count.write_text("")
        out = run(mode, "catches_failure", tmp_path, tmp_path / "home", HOME_COUNT=str(count))
        assert out.stdout.count("caught:") == 1, (mode, out.stdout, out.stderr)
        assert "'A': 'exit code 4'" in out.stdout
        assert count.read_text() == "attempt\n", mode
        assert out.returncode == (0 if mode == "python" else 1)  # dagon run: 1 when a run did not succeed


def test_a_workflow_built_in_a_function_is_run_by_dagon_run(tmp_path: Path) -> None:
    out = run("python", "built_in_function", tmp_path, tmp_path / "home")
    assert out.returncode == 0 and out.stdout == "built\n"
    assert not (tmp_path / "home").exists()  # python runs nothing: the script never calls run()
    out = run("dagon run", "built_in_function", tmp_path, tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "home").glob("scratch/Built-In-Function-*/A-1/built.txt"))) == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_run_raises_and_the_script_stops(mode: str, tmp_path: Path) -> None:
    script = write(
        tmp_path / "after_failure.py",
        "from dagon import Workflow\nfrom dagon.task import DagonTask, TaskType\n"
        "wf = Workflow('After-Failure')\nt = DagonTask(TaskType.BATCH, 'A', 'exit 3')\nwf.add_task(t)\n"
        "wf.run()\nprint(t.get_scratch_dir() + '/out.txt')\n",
    )
    out = (
        run_script(script, cwd=tmp_path, home=tmp_path / "home")
        if mode == "python"
        else run_cli("run", str(script), cwd=tmp_path, home=tmp_path / "home")
    )
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "TaskFailed: workflow 'After-Failure': 1 task(s) failed — A: exit code 3" in (
        out.stderr
    )
    assert "NoneType" not in out.stderr  # the script's code after run() never ran


@pytest.mark.mosquitto
def test_scripts_on_mosquitto_with_an_agent_process(mosquitto: Any, tmp_path: Path) -> None:
    agent = start_agent(mosquitto.url, tmp_path / "agent", "original-scripts-agent")
    try:
        env = {"DAGON_BROKER": mosquitto.url}
        out = run("python", "checkpoint_demo", tmp_path / "work", tmp_path / "client", **env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "['b', 'a', 'a']"
        (kept,) = (tmp_path / "agent" / "scratch").glob("DataFlow-Checkpoint-*/Checkpoint_1-1")
        assert (kept / "DataFlow-Checkpoint" / "D" / "f3.txt").read_text() == "b\na\n"
        out = run("dagon run", "transversal_local", tmp_path / "work", tmp_path / "client", **env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "['from-E', 'from-C', 'from-A']"
        out = run("dagon run", "refused_runtimes", tmp_path / "work", tmp_path / "client", **env)
        assert out.returncode == 2  # an error raised by the script (the run was refused)
        assert "no online agent offers runtime 'kubernetes'" in " ".join(out.stderr.split())
    finally:
        stop_process(agent)
    shutil.rmtree(tmp_path / "agent" / "scratch", ignore_errors=True)
