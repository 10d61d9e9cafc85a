"""A ``dagon-agent --runtimes slurm`` process SIGKILLed while its job runs, restarted: it re-attaches.

Real components: a private single-node Slurm (munged, slurmctld, slurmd), Mosquitto, a
standalone ``dagon coordinator`` and ``dagon-agent`` processes; the run is handed over
with ``dagon submit --wait``. The agent is killed with SIGKILL (nothing of it runs
afterwards, its keeper included, which kills what carries the agent life's token —
never a Slurm job). The restarted agent (same id, same home) follows the recorded
job as the same attempt: one ``sbatch`` for the task, the job's own exit code in the
run's result, nothing left in ``squeue``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from _slurm import SlurmCluster, cluster_processes, private_slurm
from compat._scripts import DAGON, environ, run_cli, start_agent, write

pytestmark = [pytest.mark.slurm, pytest.mark.mosquitto]

JOB = "sleep 8; echo computed > result.txt; exit 7"


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[SlurmCluster]:
    with private_slurm(tmp_path) as cluster:
        yield cluster


def wait_for(what: str, check: Any, limit: float = 60.0) -> Any:
    deadline = time.monotonic() + limit
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {limit:g} s"
        time.sleep(0.2)
    return found


def agent(mosquitto: Any, tmp_path: Path, slurm: SlurmCluster) -> subprocess.Popen[bytes]:
    import os

    os.environ["SLURM_CONF"] = str(slurm.conf)  # start_agent passes the test's environment on
    try:
        return start_agent(mosquitto.url, tmp_path / "agent", "login-node", coordinator_home=tmp_path / "coord",
                           extra=("--runtimes", "slurm,process"))  # fmt: skip
    finally:
        del os.environ["SLURM_CONF"]


def test_a_sigkilled_agent_restarts_and_reattaches_to_its_slurm_job(
    mosquitto: Any, slurm: SlurmCluster, tmp_path: Path
) -> None:
    script = write(
        tmp_path / "hpc.py",
        "from dagon import Workflow\nfrom dagon.task import DagonTask, TaskType\n"
        "wf = Workflow('Restart-Demo')\n"
        f"wf.add_task(DagonTask(TaskType.SLURM, 'simulate', {JOB!r}, partition='debug'))\n"
        "wf.run()\n",
    )
    client, coord_home = tmp_path / "cli", tmp_path / "coord"
    for args, where in ((("keys", "init"), coord_home), (("keys", "client"), client),
                        (("keys", "trust-coordinator", str(coord_home / "keys" / "coordinator.pub")), client),
                        (("keys", "trust-client", str(client / "keys" / "client.pub")), coord_home)):  # fmt: skip
        done = run_cli(*args, cwd=tmp_path, home=where)
        assert done.returncode == 0, done.stderr
    coord = subprocess.Popen([*DAGON, "coordinator", "--broker", mosquitto.url, "--requeue-grace", "120"],
                             env=environ(coord_home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first = agent(mosquitto, tmp_path, slurm)
    second = None
    submit = None
    try:
        wait_for("the agent coming online", lambda: "login-node" in run_cli(
            "agents", "--json", "--broker", mosquitto.url, cwd=tmp_path, home=client).stdout)  # fmt: skip
        submit = subprocess.Popen([*DAGON, "submit", str(script), "--broker", mosquitto.url, "--wait"],
                                  cwd=tmp_path, env=environ(client), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)  # fmt: skip
        scratch = tmp_path / "agent" / "scratch"
        pattern = "*/simulate-1/.dagon/slurm-job"
        record = wait_for("the job id being recorded", lambda: next(scratch.glob(pattern), None))
        job = str(json.loads(record.read_text())["job"])
        wait_for("the job running", lambda: slurm.job_state(job) == "RUNNING")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        time.sleep(1.0)  # the keeper has acted on the agent's death by now
        assert slurm.job_state(job) == "RUNNING", "the job did not survive its agent"
        second = agent(mosquitto, tmp_path, slurm)
        out, err = submit.communicate(timeout=120)
        log = (tmp_path / "agent" / "agent.log").read_text()
        assert submit.returncode != 0, out + err  # the job exits 7: the run fails, with that exit code
        assert "exit code 7" in out + err, out + err + log[-3000:]
        assert "re-attaching to" in log and "follows job " + job in log, log[-3000:]
        assert not list(scratch.glob("*/simulate-2"))  # no second attempt was needed
        assert (record.parent.parent / "result.txt").read_text() == "computed\n"
        # One sbatch for the task (MinJobAge keeps ended jobs listed), and nothing left in the queue.
        every = slurm.squeue("--noheader", "--states=all", "--format=%i %j %T").split("\n")
        assert [line.split()[0] for line in every if line.strip()] == [job], every
        assert slurm.job_state(job) == "FAILED"
        assert slurm.squeue("--noheader", "--format=%i").strip() == ""
    finally:
        if submit is not None:
            if submit.poll() is None:
                submit.kill()
            submit.communicate()  # reaps it and closes its pipes (an open one leaks into later tests)
        stop_process(second)
        stop_process(first)
        stop_process(coord)


def test_the_cluster_fixture_leaves_no_process_behind(tmp_path: Path) -> None:
    # slurmstepd detaches from slurmd and outlives it: the fixture cancels the jobs, stops the
    # daemons and kills (by PID) whatever of this cluster still runs.
    with private_slurm(tmp_path) as cluster:
        job = subprocess.run(["sbatch", "--parsable", f"--chdir={tmp_path}", "--wrap", "sleep 300"], env=cluster.env,
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()  # fmt: skip
        wait_for("the job running", lambda: cluster.job_state(job) == "RUNNING")
        assert len(cluster_processes(cluster.conf)) > 3  # slurmctld, slurmd, slurmstepd, the job's shell and sleep
    assert cluster_processes(cluster.conf) == []
    ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True).stdout
    assert not [line for line in ps.splitlines() if str(cluster.conf) in line and not line.startswith("Z")]
