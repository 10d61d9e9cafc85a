"""Run DAGonStar-style scripts as real subprocesses (``sys.executable``), like users do."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from dagon._keys import add_pin, agent_signer, coordinator_signer, enroll
from dagon._plan import agents_on
from dagon.protocol import raw_public_key

ROOT = Path(__file__).resolve().parents[2]
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]
AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]

DATAFLOW = ROOT / "examples" / "dataflow" / "dataflow-demo.py"


def environ(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_MQTT_PROTOCOL")}
    env.update(DAGON_HOME=str(home), COLUMNS="200", **extra)
    return env


def run_script(
    script: Path, *args: str, cwd: Path, home: Path, timeout: float = 90, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=environ(home, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(*args: str, cwd: Path, home: Path, timeout: float = 90, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DAGON, *args],
        cwd=cwd,
        env=environ(home, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_agent(
    url: str,
    home: Path,
    name: str,
    *,
    coordinator_home: Path | None = None,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """An agent enrolled with the coordinator key of ``coordinator_home`` (default: ``client`` next to ``home``)."""
    home.mkdir(parents=True, exist_ok=True)
    trusted = coordinator_home or home.parent / "client"
    coordinator_signer(trusted)  # `dagon keys init`
    enroll(home, trusted / "keys" / "coordinator.pub")  # `dagon-agent enroll --yes`
    pins = trusted / "keys" / "known_agents"  # `dagon agents approve NAME` on the coordinator's side
    if f"{name} " not in (pins.read_text() if pins.exists() else ""):
        add_pin(pins, name, raw_public_key(agent_signer(home).public_key))
    cmd = [*AGENT, "--broker", url, "--id", name, "--slots", "2", "--scratch", str(home / "scratch"), *extra]
    with (home / "agent.log").open("wb") as log:
        return subprocess.Popen(cmd, env=environ(home, **(env or {})), stdout=log, stderr=subprocess.STDOUT)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def ini(path: Path, *, scratch: Path, run_base: str = "", remove_dir: bool = False) -> Path:
    """A dagon.ini like DAGonStar's sample, logging sections included."""
    return write(
        path,
        "[dagon_service]\nroute = http://localhost:57000\nuse = False\n\n"
        f"[batch]\nscratch_dir_base = {scratch}\nrun_base = {run_base}\nremove_dir = {remove_dir}\nthreads = 2\n\n"
        "[slurm]\npartition =\n\n[ec2]\nkey = not-a-real-key\nsecret = hunter2-secret\n\n"
        "[loggers]\nkeys = root\n\n[handlers]\nkeys = stream_handler\n\n[formatters]\nkeys = formatter\n\n"
        "[logger_root]\nlevel = DEBUG\nhandlers = stream_handler\n\n"
        "[handler_stream_handler]\nclass = StreamHandler\nlevel = DEBUG\nformatter = formatter\n"
        "args = (sys.stderr,)\n\n"
        "[formatter_formatter]\nformat = INI-LOGGING %(levelname)s %(message)s\n",
    )


FAILING = """\
from dagon import Workflow
from dagon.task import DagonTask, TaskType

workflow = Workflow("Failing-Demo")
taskA = DagonTask(TaskType.BATCH, "A", "echo input > in.txt")
taskB = DagonTask(TaskType.BATCH, "B", "cat workflow:///A/in.txt; echo 'B could not parse in.txt' >&2; exit 3")
taskC = DagonTask(TaskType.BATCH, "C", "cat workflow:///B/out.txt > c.txt")
workflow.add_task(taskA)
workflow.add_task(taskB)
workflow.add_task(taskC)
workflow.make_dependencies()
workflow.run()
print("not reached")
"""

PARALLEL = """\
from dagon import Workflow
from dagon.task import DagonTask, TaskType

workflow = Workflow("Parallel-Demo")
taskA = DagonTask(TaskType.BATCH, "A", "mkdir output; for i in 1 2 3; do echo $i > output/f$i.txt; done")
taskB = DagonTask(TaskType.BATCH, "B", "awk '{print $1 * 10}' workflow:///A/output/*.txt > out.txt")
taskB.set_mode("parallel")
taskC = DagonTask(TaskType.BATCH, "C", "cat workflow:///B/out.txt | sort -n > all.txt")
for t in (taskA, taskB, taskC):
    workflow.add_task(t)
workflow.make_dependencies()
workflow.run()
print(open(taskC.get_scratch_dir() + "/all.txt").read().split())
print(sorted(t.name for t in [taskA, taskB, taskC] if t.status.name == "FINISHED"))
"""


def wait_announced(url: str, *names: str, timeout: float = 60) -> None:
    """Block until every agent in ``names`` has its retained announcement on the broker (started
    agents take a few seconds to import and connect, more on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        online = {name for name, _ in asyncio.run(agents_on(url, quiet=0.3, limit=2.0))}
        if set(names) <= online:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"agents {sorted(set(names) - online)} did not announce themselves in {timeout:.0f} s")
        time.sleep(0.2)
