"""DAGonStar SLURM and ``ip=`` scripts, unchanged, through ``python script.py`` and ``dagon submit``.

Real components: a private single-node Slurm (munged, slurmctld, slurmd) and an OpenSSH
sshd on its own address in a network namespace; for ``dagon submit`` also a Mosquitto
broker, a standalone coordinator and a ``dagon-agent --runtimes slurm,ssh`` process.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from _slurm import SlurmCluster, private_slurm
from _sshd import RemoteHost, namespaced_sshd
from compat._scripts import AGENT, DAGON, environ, run_cli, run_script, write

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[SlurmCluster]:
    with private_slurm(tmp_path) as cluster:
        yield cluster


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteHost]:
    with namespaced_sshd(tmp_path) as host:
        yield host


def script(tmp: Path, remote: RemoteHost) -> Path:
    """A DAGonStar workflow: a SLURM producer, a task on the ``ip=`` host, a local consumer."""
    return write(
        tmp / "hpc.py",
        "from dagon import Workflow\n"
        "from dagon.task import DagonTask, TaskType\n"
        "wf = Workflow('HPC-Demo')\n"
        "sim = DagonTask(TaskType.SLURM, 'simulate', 'mkdir out; seq 1 1000 > out/field.txt; echo $SLURM_JOB_ID"
        " > out/job.txt', partition='debug', ntasks=1, memory=64)\n"
        f"post = DagonTask(TaskType.BATCH, 'post', 'sort -rn workflow:///simulate/out/field.txt | head -3 > top.txt;"
        f" hostname -I > where.txt', ip='{remote.address}', ssh_username='root', keypath='{remote.client_key}')\n"
        "report = DagonTask(TaskType.BATCH, 'report', 'cat workflow:///post/top.txt workflow:///simulate/out/job.txt"
        " > report.txt')\n"
        "for t in (sim, post, report):\n"
        "    wf.add_task(t)\n"
        "wf.make_dependencies()\n"
        "wf.run()\n"
        "if report.get_scratch_dir():  # under dagon submit the script only hands the workflow over\n"
        "    print('REPORT', open(report.get_scratch_dir() + '/report.txt').read().split())\n",
    )


def remote_env(slurm: SlurmCluster, remote: RemoteHost) -> dict[str, str]:
    return {
        "SLURM_CONF": str(slurm.conf),
        "DAGON_RUNTIMES": "slurm,ssh",
        "DAGON_SSH_KNOWN_HOSTS": str(remote.known_hosts),
        "DAGON_SSH_SCRATCH": str(remote.work / "remote-scratch"),
    }


def check_report(stdout: str, remote: RemoteHost) -> None:
    line = next(line for line in stdout.splitlines() if line.startswith("REPORT"))
    words = json.loads(line.removeprefix("REPORT ").replace("'", '"'))
    assert words[:3] == ["1000", "999", "998"]
    assert words[3].isdigit()  # the Slurm job id the SLURM task ran as


def test_a_dagonstar_slurm_and_ip_script_runs_unchanged(
    slurm: SlurmCluster, remote: RemoteHost, tmp_path: Path
) -> None:
    out = run_script(script(tmp_path, remote), cwd=tmp_path, home=tmp_path / "home", timeout=120,
                     **remote_env(slurm, remote))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    check_report(out.stdout, remote)
    where = next((tmp_path / "home").glob("scratch/*/post-*/where.txt")).read_text()
    assert remote.address in where.split()  # it ran on the namespaced host
    assert list((remote.work / "remote-scratch").iterdir()) == []  # remote scratch cleaned


def test_without_sbatch_the_agent_names_what_to_fix(tmp_path: Path) -> None:
    out = subprocess.run(
        [*AGENT, "--broker", "mqtt://127.0.0.1:9", "--runtimes", "slurm,process", "--insecure"],
        env=environ(tmp_path / "home", PATH="/nonexistent"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("dagon-agent: error: the slurm runtime needs sbatch on PATH"), out.stderr


@pytest.mark.mosquitto
def test_dagon_submit_runs_it_on_a_standalone_agent(
    mosquitto: Any, slurm: SlurmCluster, remote: RemoteHost, tmp_path: Path
) -> None:
    home = tmp_path / "cli"
    for args, where in ((("keys", "init"), tmp_path / "coord"), (("keys", "client"), home),
                        (("keys", "trust-coordinator", str(tmp_path / "coord" / "keys" / "coordinator.pub")), home),
                        (("keys", "trust-client", str(home / "keys" / "client.pub")), tmp_path / "coord")):  # fmt: skip
        done = run_cli(*args, cwd=tmp_path, home=where)
        assert done.returncode == 0, done.stderr
    coord = subprocess.Popen([*DAGON, "coordinator", "--broker", mosquitto.url], env=environ(tmp_path / "coord"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    from dagon._keys import add_pin, agent_signer, coordinator_signer, enroll
    from dagon.protocol import raw_public_key

    coordinator_signer(tmp_path / "coord")
    enroll(tmp_path / "agent", tmp_path / "coord" / "keys" / "coordinator.pub")
    # what `dagon agents approve login-node` does on the coordinator's machine
    add_pin(
        tmp_path / "coord" / "keys" / "known_agents",
        "login-node",
        raw_public_key(agent_signer(tmp_path / "agent").public_key),
    )
    env = environ(tmp_path / "agent", **{k: v for k, v in remote_env(slurm, remote).items() if k != "DAGON_RUNTIMES"})
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [*AGENT, "--broker", mosquitto.url, "--id", "login-node", "--runtimes", "slurm,ssh,process",
             "--scratch", str(tmp_path / "agent" / "scratch")],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = run_cli("agents", "--json", "--broker", mosquitto.url, cwd=tmp_path, home=home)
            if rows.returncode == 0 and any(r["id"] == "login-node" for r in json.loads(rows.stdout or "[]")):
                break
            time.sleep(0.3)
        row = next(r for r in json.loads(rows.stdout) if r["id"] == "login-node")
        assert {"slurm", "ssh", "http"} <= set(row["runtimes"])
        out = run_cli("submit", str(script(tmp_path, remote)), "--broker", mosquitto.url, "--wait", cwd=tmp_path,
                      home=home, timeout=150)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:] + (tmp_path / "agent.log").read_text()[-3000:]
        report = next((tmp_path / "agent" / "scratch").glob("*/report-*/report.txt")).read_text().split()
        assert report[:3] == ["1000", "999", "998"]
    finally:
        stop_process(agent)
        stop_process(coord)
