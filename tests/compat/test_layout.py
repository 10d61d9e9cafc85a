"""Task directories where DAGonStar puts them: ``<scratch_dir_base>[/<run_base>]/<epoch ms>-<task>``,
and ``get_scratch_dir()`` returning them — scripts run as subprocesses with ``python FILE.py`` and
``dagon run FILE.py`` on the embedded default, and on Mosquitto with ``dagon-agent`` processes
laid out the same way (``DAGON_SCRATCH_LAYOUT=dagonstar``)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

from ._scripts import DATAFLOW, ini, run_cli, run_script, start_agent, write

LAYOUT = """\
from dagon import Workflow
from dagon.task import DagonTask, TaskType

workflow = Workflow("Layout-Demo")
a = DagonTask(TaskType.BATCH, "A", "mkdir output; echo made-by-A > output/f1.txt")
b = DagonTask(TaskType.BATCH, "B", "cat workflow:///A/output/f1.txt > f2.txt")
workflow.add_task(a)
workflow.add_task(b)
workflow.make_dependencies()
workflow.run()
print("base", workflow.get_scratch_dir_base())
for task in (a, b):
    print(task.name, task.get_scratch_dir())
print(open(b.get_scratch_dir() + "/f2.txt").read().strip())
"""

# A flat config (DAGonStar scripts pass the [batch] settings so) and a task that fails once:
# its retry runs in a directory of its own.
RETRY = """\
import sys
from dagon import Retry, Workflow

workflow = Workflow("Retry-Demo", {"scratch_dir_base": sys.argv[1], "remove_dir": False})
workflow.shell(
    "R", "if [ -e ../tried ]; then echo second > r.txt; else touch ../tried; exit 3; fi",
    retry=Retry(attempts=1, backoff=0.1, max_backoff=0.1),
)
result = workflow.run()
print("R", result.tasks["R"].attempt, result.tasks["R"].workdir)
"""

# Two agents on two "hosts" (different host ids: B pulls A's file from A's agent over HTTP) and C
# next to A (staged on the same host): every lookup of a producer's directory goes through the
# record of its attempt.
PINNED = """\
from dagon import Workflow

workflow = Workflow("Pinned-Demo", {"remove_dir": False})
workflow.shell("A", "echo from-A > a.txt", agent="lay-a")
workflow.shell("B", "cat workflow:///A/a.txt > b.txt", agent="lay-b")
workflow.shell("C", "cat workflow:///A/a.txt workflow:///B/b.txt > c.txt", agent="lay-a")
result = workflow.run()
for name in "ABC":
    print(name, result.tasks[name].workdir)
"""

META = """\
from dagon import Workflow
from dagon.dag_tps import DAG_TPS
from dagon.task import DagonTask, TaskType

wf1 = Workflow("wf1")
a = DagonTask(TaskType.BATCH, "A", "echo from-wf1 > a.txt")
wf1.add_task(a)
wf2 = Workflow("wf2")
b = DagonTask(TaskType.BATCH, "B", "cat workflow://wf1/A/a.txt > b.txt")
wf2.add_task(b)
meta = DAG_TPS("Meta")
meta.add_workflow(wf1)
meta.add_workflow(wf2)
meta.make_dependencies()
meta.run()
print("base1", wf1.get_scratch_dir_base())
print("base2", wf2.get_scratch_dir_base())
print("A", a.get_scratch_dir())
print("B", b.get_scratch_dir())
"""

RESUME = """\
import sys
from dagon import Workflow
from dagon.task import DagonTask, TaskType

wf = Workflow("Resumable", checkpoint_file="wf.ckpt")
a = DagonTask(TaskType.BATCH, "A", "echo data > f.txt")
b = DagonTask(TaskType.BATCH, "B", "test -e ../../../go || exit 7; cat workflow:///A/f.txt > copy.txt")
wf.add_task(a)
wf.add_task(b)
wf.make_dependencies()
try:
    wf.run(resume_checkpoint_file="wf.ckpt")
finally:
    print("A", a.get_scratch_dir())
    print("B", b.get_scratch_dir())
"""

_MS = re.compile(r"([0-9]{13,})-([A-Za-z]+)")


def dirs(out: str) -> dict[str, Path]:
    """``NAME PATH`` lines of a script's output."""
    found = {}
    for line in out.splitlines():
        name, _, path = line.partition(" ")
        if path.startswith("/"):
            found[name] = Path(path)
    return found


@pytest.mark.parametrize("how", ["python", "dagon run"])
def test_task_directories_follow_dagonstars_layout(tmp_path: Path, how: str) -> None:
    work = tmp_path / "work"
    scratch = tmp_path / "scratch"
    ini(work / "dagon.ini", scratch=scratch, run_base="run-%Y-__MILLIS__")
    script = write(work / "layout.py", LAYOUT)
    began = int(time.time() * 1000)
    if how == "python":
        out = run_script(script, cwd=work, home=tmp_path / "home")
    else:
        out = run_cli("run", str(script), cwd=work, home=tmp_path / "home")
    ended = int(time.time() * 1000)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "made-by-A"
    found = dirs(out.stdout)
    (run_dir,) = scratch.iterdir()
    assert found["base"] == run_dir and re.fullmatch(r"run-[0-9]{4}-[0-9]{13,}", run_dir.name)
    for name in "AB":
        path = found[name]
        match = _MS.fullmatch(path.name)
        assert path.parent == run_dir and match is not None and match[2] == name, path
        assert began <= int(match[1]) <= ended
        assert path.is_dir() and (path / ".dagon" / "command").is_file()
    assert (found["A"] / "output" / "f1.txt").read_text() == "made-by-A\n"
    assert (found["B"] / "f2.txt").read_text() == "made-by-A\n"
    # Nothing else than the task directories and dagon's hidden bookkeeping.
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [".dagon-index", ".dagon-scratch"]
    assert not (tmp_path / "home" / "scratch").exists()
    assert not list(work.glob("*.json"))  # dagon writes no file of its own next to the script


@pytest.mark.parametrize("how", ["python", "dagon run"])
def test_a_meta_workflows_members_share_the_first_members_directory(tmp_path: Path, how: str) -> None:
    work = tmp_path / "work"
    scratch = tmp_path / "scratch"
    ini(work / "dagon.ini", scratch=scratch, run_base="run-__MILLIS__")
    script = write(work / "meta.py", META)
    if how == "python":
        out = run_script(script, cwd=work, home=tmp_path / "home")
    else:
        out = run_cli("run", str(script), cwd=work, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    found = dirs(out.stdout)
    (run_dir,) = scratch.iterdir()
    assert found["base1"] == found["base2"] == run_dir
    for name in "AB":
        assert found[name].parent == run_dir and _MS.fullmatch(found[name].name), found
    assert (found["B"] / "b.txt").read_text() == "from-wf1\n"


def test_a_resumed_run_goes_on_in_the_first_runs_directory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    scratch = work / "scratch"
    ini(work / "dagon.ini", scratch=scratch, run_base="run-__MILLIS__")
    script = write(work / "resume.py", RESUME)
    first = run_script(script, cwd=work, home=tmp_path / "home")
    assert first.returncode == 1 and "B: exit code 7" in first.stderr, first.stderr
    (run_dir,) = scratch.iterdir()
    assert dirs(first.stdout)["A"].parent == run_dir
    (work / "go").touch()  # ../../../go from a task directory <work>/scratch/<run_base>/<ms>-B
    second = run_script(script, cwd=work, home=tmp_path / "home")
    assert second.returncode == 0, second.stderr
    found = dirs(second.stdout)
    assert list(scratch.iterdir()) == [run_dir]  # DAGonStar resumes in the recorded _scratch_dir
    assert found["A"] == dirs(first.stdout)["A"]  # kept, not run again
    assert found["B"].parent == run_dir and (found["B"] / "copy.txt").read_text() == "data\n"


def test_a_retry_gets_a_directory_of_its_own(tmp_path: Path) -> None:
    script = write(tmp_path / "retry.py", RETRY)
    scratch = tmp_path / "scratch"
    out = run_script(script, str(scratch), cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    _, attempt, workdir = out.stdout.split()
    assert attempt == "2"
    attempts = sorted(p for p in scratch.iterdir() if _MS.fullmatch(p.name))
    assert len(attempts) == 2 and Path(workdir) == attempts[1]  # the later one is the retry
    assert (attempts[1] / "r.txt").read_text() == "second\n"
    assert not (attempts[0] / "r.txt").exists()  # the failed attempt's files are its own
    assert (scratch / ".dagon-index").is_dir()


@pytest.mark.mosquitto
def test_agents_on_a_broker_lay_out_and_stage_the_same_way(mosquitto: Any, tmp_path: Path) -> None:
    layout = {"DAGON_SCRATCH_LAYOUT": "dagonstar"}
    agents = [
        start_agent(mosquitto.url, tmp_path / "lay-a", "lay-a", env={**layout, "DAGON_HOST_ID": "host-a"}),
        start_agent(mosquitto.url, tmp_path / "lay-b", "lay-b", env={**layout, "DAGON_HOST_ID": "host-b"}),
    ]
    try:
        script = write(tmp_path / "pinned.py", PINNED)
        out = run_script(script, cwd=tmp_path, home=tmp_path / "client", DAGON_BROKER=mosquitto.url)
        assert out.returncode == 0, out.stderr
        found = dirs(out.stdout)
        for name, where in (("A", "lay-a"), ("B", "lay-b"), ("C", "lay-a")):
            assert found[name].parent == tmp_path / where / "scratch", found
            assert _MS.fullmatch(found[name].name) and found[name].name.endswith(f"-{name}")
        assert (found["C"] / "c.txt").read_text() == "from-A\nfrom-A\n"

        # A DAGonStar script unchanged: get_scratch_dir() is the agent's <epoch ms>-<task>.
        work = tmp_path / "work"
        work.mkdir()
        out = run_script(DATAFLOW, cwd=work, home=tmp_path / "client", DAGON_BROKER=mosquitto.url)
        assert out.returncode == 0, out.stderr
        (d,) = [p for where in ("lay-a", "lay-b") for p in (tmp_path / where / "scratch").glob("*-D")]
        assert _MS.fullmatch(d.name) and len((d / "f3.txt").read_text().splitlines()) == 4
    finally:
        for agent in agents:
            stop_process(agent)
    for name in ("lay-a", "lay-b"):
        shutil.rmtree(tmp_path / name / "scratch", ignore_errors=True)
