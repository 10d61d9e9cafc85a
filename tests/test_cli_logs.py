"""`dagon logs RUN TASK` on one machine (the embedded default), run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]

WORKFLOW = """\
import dagon
wf = dagon.Workflow("logdemo")
wf.shell("prep", "echo prep-out > p.txt; echo hello-from-prep; echo warn-prep >&2")
wf.shell(
    "flaky",
    "cat workflow:///prep/p.txt; echo try-$DAGON_ATTEMPT; echo err-$DAGON_ATTEMPT >&2; test $DAGON_ATTEMPT -ge 2",
    retry=dagon.Retry(attempts=1, backoff=0.1),
)
wf.run()
"""


def dagon(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DAGON_")}
    environ.update(DAGON_HOME=str(home), COLUMNS="200")
    return subprocess.run(
        [*DAGON, *args], capture_output=True, text=True, timeout=120, env=environ, cwd=ROOT, check=False
    )


def test_logs_of_every_attempt_from_the_scratch_and_clear_errors(tmp_path: Path) -> None:
    script = tmp_path / "wf.py"
    script.write_text(WORKFLOW)
    ran = dagon("run", str(script), home=tmp_path / "home")
    assert ran.returncode == 0, ran.stderr
    (run,) = [row["run"] for row in json.loads(dagon("runs", "--json", home=tmp_path / "home").stdout)]

    def logs(*args: str) -> subprocess.CompletedProcess[str]:
        return dagon("logs", run, *args, home=tmp_path / "home")

    last = logs("flaky")
    assert (last.returncode, last.stdout, last.stderr) == (0, "prep-out\ntry-2\n", "")
    first = logs("flaky", "--attempt", "1")
    assert (first.returncode, first.stdout) == (0, "prep-out\ntry-1\n")
    assert logs("flaky", "--stderr").stdout == "err-2\n"
    assert logs("flaky", "--attempt", "1", "--stderr").stdout == "err-1\n"

    # prep's directory was garbage-collected once flaky (its only reader) succeeded: its stdout is
    # gone, and the coordinator kept its stderr tail only — each said plainly.
    gone = logs("prep")
    assert gone.returncode == 2 and gone.stdout == ""
    assert "stdout of 'prep' attempt 1" in gone.stderr and "is gone (garbage collection" in gone.stderr
    assert "the coordinator keeps no copy of stdout" in gone.stderr and "keep_scratch=True" in gone.stderr
    tail = logs("prep", "--stderr")
    assert (tail.returncode, tail.stdout) == (0, "warn-prep\n")
    assert "note: this is the stderr tail the coordinator kept" in tail.stderr

    beyond = logs("flaky", "--attempt", "3")
    assert beyond.returncode == 2 and "has attempts 1 to 2 only, not 3" in beyond.stderr
    typo = logs("flakey")
    assert typo.returncode == 2 and "has no task 'flakey' — did you mean 'flaky'?" in typo.stderr
    unknown = dagon("logs", "no-such-run", "flaky", home=tmp_path / "home")
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr and "dagon runs" in unknown.stderr
    assert "Traceback" not in unknown.stderr + typo.stderr + beyond.stderr + gone.stderr


DAGONSTAR = """\
import sys
import dagon
wf = dagon.Workflow("logstar", {"scratch_dir_base": sys.argv[1]})
wf.shell(
    "flaky", "echo try-$DAGON_ATTEMPT; echo err-$DAGON_ATTEMPT >&2; test $DAGON_ATTEMPT -ge 2",
    retry=dagon.Retry(attempts=1, backoff=0.1),
)
wf.run()
"""


def test_logs_of_every_attempt_in_dagonstars_layout(tmp_path: Path) -> None:
    """With a DAGonStar config, attempts live in <scratch_dir_base>/<epoch ms>-<task>: found all the same."""
    script = tmp_path / "star.py"
    script.write_text(DAGONSTAR)
    ran = dagon("run", str(script), "--", str(tmp_path / "scratch"), home=tmp_path / "home")
    assert ran.returncode == 0, ran.stderr
    assert len([p for p in (tmp_path / "scratch").iterdir() if p.name.endswith("-flaky")]) == 2
    (run,) = [row["run"] for row in json.loads(dagon("runs", "--json", home=tmp_path / "home").stdout)]
    assert dagon("logs", run, "flaky", home=tmp_path / "home").stdout == "try-2\n"
    assert dagon("logs", run, "flaky", "--attempt", "1", home=tmp_path / "home").stdout == "try-1\n"
    assert dagon("logs", run, "flaky", "--attempt", "1", "--stderr", home=tmp_path / "home").stdout == "err-1\n"
