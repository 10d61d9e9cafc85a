"""Resuming runs: DAGonStar's ``run(resume_checkpoint_file=...)`` and ``dagon resume RUN``.

Every run is a real process on the embedded default; tasks append to a marker
file, so "kept, not run again" is checked on real effects.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._scripts import run_cli, run_script, write

SCRIPT = """
from dagon import Workflow
from dagon.task import DagonTask, TaskType

MARK = {mark!r}
FLAG = {flag!r}
wf = Workflow("resumable", checkpoint_file={ckpt!r})
a = DagonTask(TaskType.BATCH, "A", f"echo A >> {{MARK}}; mkdir out; echo data > out/f.txt")
b = DagonTask(
    TaskType.BATCH, "B",
    f"echo B >> {{MARK}}; test -e {{FLAG}} || exit 7; cat workflow:///A/out/f.txt > copy.txt",
)
wf.add_task(a)
wf.add_task(b)
wf.make_dependencies()
wf.run(resume_checkpoint_file={ckpt!r})
print("DONE")
"""


def script(tmp: Path) -> tuple[Path, Path, Path, Path]:
    mark, flag, ckpt = tmp / "markers", tmp / "flag", tmp / "wf.ckpt"
    path = write(tmp / "wf.py", SCRIPT.format(mark=str(mark), flag=str(flag), ckpt=str(ckpt)))
    return path, mark, flag, ckpt


def lines(path: Path) -> list[str]:
    return path.read_text().split()


def test_a_failed_dagonstar_run_resumes_from_its_checkpoint_file(tmp_path: Path) -> None:
    path, mark, flag, ckpt = script(tmp_path)
    first = run_script(path, cwd=tmp_path, home=tmp_path / "home")
    assert first.returncode == 1, first.stderr  # B failed: TaskFailed
    assert "B: exit code 7" in first.stderr
    doc = json.loads(ckpt.read_text())
    assert doc["workflow"] == "resumable" and doc["run"].startswith("resumable-")
    flag.touch()
    second = run_script(path, cwd=tmp_path, home=tmp_path / "home")
    assert second.returncode == 0, second.stderr
    assert "DONE" in second.stdout
    # A ran once (kept across the resume, its output verified against its manifest); B twice.
    assert lines(mark) == ["A", "B", "B"]
    assert json.loads(ckpt.read_text())["run"] == doc["run"]  # the same run, resumed
    copies = list((tmp_path / "home" / "scratch").rglob("B-2/copy.txt"))
    assert [c.read_text() for c in copies] == ["data\n"]


def test_a_corrupted_output_of_a_kept_task_is_regenerated_on_resume(tmp_path: Path) -> None:
    path, mark, flag, _ = script(tmp_path)
    first = run_script(path, cwd=tmp_path, home=tmp_path / "home")
    assert first.returncode == 1, first.stderr
    (produced,) = list((tmp_path / "home" / "scratch").rglob("A-1/out/f.txt"))
    produced.write_text("tampered\n")  # no longer matches A's sha256 manifest
    flag.touch()
    second = run_script(path, cwd=tmp_path, home=tmp_path / "home")
    assert second.returncode == 0, second.stderr
    assert lines(mark) == ["A", "B", "A", "B"]  # A ran again instead of B reading bad data
    (copy,) = list((tmp_path / "home" / "scratch").rglob("B-*/copy.txt"))
    assert copy.read_text() == "data\n"


def test_dagon_resume_reruns_what_failed_and_keeps_what_succeeded(tmp_path: Path) -> None:
    path, mark, flag, ckpt = script(tmp_path)
    first = run_cli("run", str(path), cwd=tmp_path, home=tmp_path / "home")
    assert first.returncode == 1
    run = json.loads(ckpt.read_text())["run"]
    runs = run_cli("runs", cwd=tmp_path, home=tmp_path / "home")
    assert run in runs.stdout and "failed" in runs.stdout
    missing = run_cli("resume", "no-such-run", cwd=tmp_path, home=tmp_path / "home")
    assert missing.returncode != 0 and "no-such-run" in missing.stderr
    flag.touch()
    again = run_cli("resume", run, cwd=tmp_path, home=tmp_path / "home")
    assert again.returncode == 0, again.stderr
    assert lines(mark) == ["A", "B", "B"]
    status = run_cli("status", run, "--json", cwd=tmp_path, home=tmp_path / "home")
    doc = json.loads(status.stdout)
    assert doc["state"] == "succeeded"


def test_an_interrupted_dagon_run_is_recorded_so_and_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    from ._scripts import DAGON, environ

    mark, gate = tmp_path / "markers", tmp_path / "gate"
    path = write(
        tmp_path / "slow.py",
        "import dagon\n"
        "wf = dagon.Workflow('slow')\n"
        f"wf.shell('A', 'echo A >> {mark}')\n"
        f"wf.shell('B', 'echo B >> {mark}; while [ ! -e {gate} ]; do sleep 0.05; done', after=['A'])\n",
    )
    proc = subprocess.Popen(
        [*DAGON, "run", str(path)], cwd=tmp_path, env=environ(tmp_path / "home"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "B" not in (mark.read_text() if mark.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    runs = run_cli("runs", "--json", cwd=tmp_path, home=tmp_path / "home")
    (doc,) = json.loads(runs.stdout)
    # The coordinator of `dagon run` ends with it: Ctrl-C cancels the run so its agents stop the
    # tasks (a remote agent would otherwise run them on for nobody), and says how to resume.
    assert doc["state"] == "cancelled", (doc, err)
    assert f"dagon resume {doc['run']}" in err
    gate.touch()
    again = run_cli("resume", doc["run"], cwd=tmp_path, home=tmp_path / "home")
    assert again.returncode == 0, again.stderr
    assert lines(mark) == ["A", "B", "B"]  # A kept; B's interrupted attempt ran again
