"""Export: CWL v1.2 validated (and run) by cwltool, Graphviz DOT, Mermaid, `dagon graph`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _broker import missing

import dagon
from dagon._export import to_cwl, to_dot, to_mermaid
from dagon.task import DagonTask, TaskType

from ._scripts import DATAFLOW, ROOT, run_cli, write

MAP_GATHER = ROOT / "examples" / "dataflow" / "map-gather.py"


def need_cwltool() -> list[str]:
    if importlib.util.find_spec("cwltool") is None:
        missing("cwltool is not installed; it is in the [test] extra (.ci/setup installs it)")
    return [sys.executable, "-m", "cwltool"]


def tricky() -> dagon.Workflow:
    wf = dagon.Workflow("Tricky", config={})
    a = DagonTask(TaskType.BATCH, "A", "mkdir output; hostname > output/f1.txt; echo 2 > output/f2.txt")
    b = DagonTask(TaskType.DOCKER, "B", "echo $(date) ${HOME:-x} > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt",
                  image="busybox:1.36")  # fmt: skip
    c = DagonTask(TaskType.BATCH, "C", "cat workflow:///A/output/*.txt > all.txt")
    d = DagonTask(TaskType.BATCH, "D", "cat workflow:///B/f2.txt workflow:///C/all.txt > f3.txt")
    e = DagonTask(TaskType.BATCH, "E", "echo done")
    for t in (a, b, c, d, e):
        wf.add_task(t)
    e.add_dependency_to(d)
    wf.shell("P", "echo py", env={"X": "1"}, timeout=30, memory=2**30)
    wf.python("Py", "json:dumps", [1, "two"], indent=2)
    wf.make_dependencies()
    return wf


def test_cwl_export_validates_with_cwltool(tmp_path: Path) -> None:
    cwltool = need_cwltool()
    path = write(tmp_path / "tricky.cwl", to_cwl(tricky()))
    doc = json.loads(path.read_text())
    assert doc["cwlVersion"] == "v1.2" and doc["class"] == "Workflow"
    b = doc["steps"]["B"]["run"]
    assert b["hints"][0] == {"class": "DockerRequirement", "dockerPull": "busybox:1.36"}
    assert b["arguments"][1].startswith("echo \\$(date) \\${HOME:-x} > f2.txt; cat $(inputs.in_0.path)")
    assert doc["steps"]["E"]["in"] == {"after_D": "D/log"}
    assert doc["steps"]["Py"]["run"]["baseCommand"] == ["python3"]
    assert doc["steps"]["C"]["run"]["inputs"]["in_0"]["type"] == {"type": "array", "items": "File"}
    out = subprocess.run([*cwltool, "--validate", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is valid CWL" in out.stdout + out.stderr


def test_dagon_graph_cwl_of_a_dynamic_map_validates_and_runs_in_cwltool(tmp_path: Path) -> None:
    cwltool = need_cwltool()
    if shutil.which("node") is None and shutil.which("nodejs") is None:
        missing("node.js is not installed (cwltool evaluates CWL expressions with it); run .ci/setup")
    script = write(
        tmp_path / "mapsum.py",
        "import dagon\n"
        "wf = dagon.Workflow('MapSum')\n"
        "wf.shell('split', 'mkdir parts && seq 1 100 > numbers && split -l 25 numbers parts/chunk_')\n"
        "SUM = \"awk '{s += $1} END {print s}'\"\n"
        "m = wf.map('count', SUM + ' workflow:///split/parts/chunk_* > n.txt', over='workflow:///split/parts/chunk_*')\n"
        "wf.gather('total', 'cat {inputs} | ' + SUM, over=m, path='n.txt')\n",
    )
    cwl = tmp_path / "mapsum.cwl"
    out = run_cli("graph", str(script), "--format", "cwl", "-o", str(cwl), cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert json.loads(cwl.read_text())["steps"]["count"]["scatter"] == ["in_0"]
    valid = subprocess.run([*cwltool, "--validate", str(cwl)], capture_output=True, text=True, timeout=120, check=False)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    ran = subprocess.run(
        [*cwltool, "--no-container", "--quiet", "--outdir", str(tmp_path / "out"), str(cwl)],
        capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    outputs = json.loads(ran.stdout)
    assert Path(outputs["total_log"]["path"]).read_text().strip() == "5050"
    assert not (tmp_path / "home").exists()  # exporting ran nothing


def test_dot_and_mermaid_show_tasks_edges_and_maps() -> None:
    wf = tricky()
    dot = to_dot([wf])
    assert dot.startswith("digraph dagon {")
    assert '"Tricky/A" -> "Tricky/B" [label="output/f1.txt"];' in dot
    assert '"Tricky/D" -> "Tricky/E" [label="after", style=dashed];' in dot
    assert 'label="Tricky";' in dot
    mermaid = to_mermaid([wf])
    assert mermaid.startswith("flowchart TD")
    assert '["B<br/>[docker]"]' in mermaid
    assert '-.->|"after"|' in mermaid
    mapped = dagon.Workflow("M", config={})
    mapped.shell("p", "touch a.txt b.txt")
    mapped.map("m", "wc -c workflow:///p/*.txt", over="workflow:///p/*.txt")
    assert "shape=box3d" in to_dot([mapped])
    assert '[["m<br/>[process]<br/>map over *.txt"]]' in to_mermaid([mapped])


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_dagon_graph_cli_runs_nothing(tmp_path: Path, fmt: str) -> None:
    out = run_cli("graph", str(DATAFLOW), "--format", fmt, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert ("flowchart TD" if fmt == "mermaid" else "digraph dagon") in out.stdout
    assert "D" in out.stdout and not (tmp_path / "home").exists()
    bad = run_cli("graph", str(MAP_GATHER), "--format", "cwl", "--workflow", "Nope", cwd=tmp_path, home=tmp_path / "h")
    assert bad.returncode == 2 and "no dagon Workflow named 'Nope'" in bad.stderr
