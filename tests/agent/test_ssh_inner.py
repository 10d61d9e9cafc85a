"""DAGonStar's remote variants over the SSH runtime: Slurm on a login node reached over SSH.

The "login node" is a network namespace running sshd and a private Slurm cluster on its
own loopback (so only jobs submitted there, over SSH, reach it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from _slurm import SlurmCluster, private_slurm
from _sshd import RemoteHost, namespaced_sshd

from dagon.agent.runtimes import Execution
from dagon.agent.runtimes._ssh import SshRuntime
from dagon.agent.runtimes._ssh_inner import remote_script
from dagon.protocol import ResultStatus, RunId, TaskAssignment, TaskName

pytestmark = [pytest.mark.ssh, pytest.mark.slurm]


@pytest.fixture
def login_node(tmp_path: Path) -> Iterator[tuple[RemoteHost, SlurmCluster]]:
    with (
        namespaced_sshd(tmp_path) as host,
        # nsenter, not `ip netns exec`: that remounts /sys, and slurmd needs the host cgroup tree.
        private_slurm(tmp_path, prefix=("nsenter", f"--net=/run/netns/{host.namespace}")) as cluster,
    ):
        yield host, cluster


def execution(tmp: Path, command: str, host: RemoteHost, cluster: SlurmCluster, **options: object) -> Execution:
    workdir = tmp / "scratch" / "run" / "t-1"
    (workdir / ".dagon").mkdir(parents=True)
    opts = {"ip": host.address, "ssh_username": "root", "keypath": str(host.client_key), "runtime": "slurm",
            "remote_scratch": str(host.work / "remote-scratch"), **options}  # fmt: skip
    a = TaskAssignment(RunId("run"), "wf", TaskName("t"), 1, "ssh", command, runtime_options=opts)
    env = {"SLURM_CONF": str(cluster.conf)}  # a login node has its own /etc/slurm; this one is private
    return Execution(a, command, workdir, env, workdir / ".dagon" / "stdout", workdir / ".dagon" / "stderr")


async def test_a_remote_slurm_job_returns_its_exit_code_and_outputs(
    login_node: tuple[RemoteHost, SlurmCluster], tmp_path: Path
) -> None:
    host, cluster = login_node
    ssh = SshRuntime(known_hosts=host.known_hosts)
    ex = execution(tmp_path, "echo $SLURM_JOB_ID > id.txt; echo out; echo err >&2; exit 3", host, cluster,
                   partition="debug", ntasks=1, memory=64)  # fmt: skip
    outcome = await ssh.run(ex)
    await ssh.aclose()
    assert outcome.status is ResultStatus.FAILED and outcome.exit_code == 3, outcome
    job = (ex.workdir / "id.txt").read_text().strip()
    assert job.isdigit()
    assert cluster.job_state(job) == "FAILED"
    assert ex.stdout.read_text() == "out\n" and outcome.stderr_tail == "err\n"


async def test_cancelling_a_remote_slurm_task_scancels_its_job(
    login_node: tuple[RemoteHost, SlurmCluster], tmp_path: Path
) -> None:
    host, cluster = login_node
    ssh = SshRuntime(known_hosts=host.known_hosts)
    ex = execution(tmp_path, "sleep 300", host, cluster, keep_remote=True)
    task = asyncio.create_task(ssh.run(ex))
    job_file = host.work / "remote-scratch" / "run" / "t-1" / ".dagon" / "slurm-job"
    async with asyncio.timeout(30):
        while not job_file.exists() or not job_file.read_text().strip():
            await asyncio.sleep(0.1)
        job = job_file.read_text().strip().split(";")[0]
        while cluster.job_state(job) != "RUNNING":
            await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ssh.aclose()
    async with asyncio.timeout(30):
        while cluster.job_state(job) not in ("CANCELLED", "COMPLETED", "FAILED"):
            await asyncio.sleep(0.2)
    assert cluster.job_state(job) == "CANCELLED"
    assert cluster.squeue("--noheader", f"--jobs={job}", "--format=%i").strip() == ""


def test_remote_container_scripts_mount_the_task_directory() -> None:
    docker = remote_script("docker", {"image": "busybox", "network": "none"}, env={"A": "1"}, command="echo hi",
                           name="dagon-t-1", task="t", cpus=1, memory=0, timeout=None)  # fmt: skip
    assert 'docker run --rm --name dagon-t-1 -v "$PWD:$PWD" -w "$PWD" -e A --network none busybox' in docker.command
    assert docker.cleanup is not None and docker.cleanup.endswith("docker rm -f dagon-t-1\n")
    apptainer = remote_script("apptainer", {"image": "img.sif", "binds": ["/data"]}, env={}, command="true",
                              name="n", task="t", cpus=1, memory=0, timeout=None)  # fmt: skip
    assert 'apptainer exec --bind "$PWD" --pwd "$PWD" --bind /data img.sif /bin/sh -c true' in apptainer.command
    assert apptainer.cleanup is None


def test_dagonstar_container_option_names_are_understood() -> None:
    docker = remote_script("docker", {"image": "ubuntu", "volume": "/data:/data", "remove": True, "pull": True},
                           env={}, command="ls", name="n", task="t", cpus=1, memory=0, timeout=None)  # fmt: skip
    assert "-v /data:/data" in docker.command and "--pull always" in docker.command
    apptainer = remote_script("apptainer", {"image": "x.sif", "bind_paths": ["/scratch"], "overlay_size": "1G"},
                              env={}, command="ls", name="n", task="t", cpus=1, memory=0, timeout=None)  # fmt: skip
    assert "--bind /scratch" in apptainer.command and "--writable-tmpfs" in apptainer.command


def _syntax_ok(script: str) -> None:
    import subprocess

    done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 0, done.stderr


def test_remote_kubernetes_runs_the_task_in_a_pod_through_kubectl() -> None:
    # Not run against a cluster (none can be installed here): the command lines, to kubectl's documentation.
    script = remote_script("kubernetes", {"image": "busybox:1.36", "namespace": "jobs", "cleanup_timeout": 60},
                           env={"TOKEN": "s3cr3t"}, command="echo hi > out.txt; exit 4", name="dagon-t-1", task="t",
                           cpus=0.5, memory=64 * 2**20, timeout=None)  # fmt: skip
    text = script.command
    kc = "kubectl --namespace=jobs"
    assert f"{kc} run dagon-t-1 --image=busybox:1.36 --restart=Never" in text and "--command -- sleep" in text
    assert '"limits":{"cpu":"500m","memory":"64Mi"}' in text
    assert f"{kc} wait --for=condition=Ready pod/dagon-t-1 --timeout=60s" in text
    assert f'tar -cf - . | {kc} exec -i dagon-t-1 -- sh -c \'mkdir -p "$0" && tar -xf - -C "$0"\' "$PWD"' in text
    assert f'{kc} exec dagon-t-1 -- tar -cf - -C "$PWD" . | tar -xf -' in text
    assert "echo hi > out.txt; exit 4\nDAGON_COMMAND_EOF" in text  # the command goes in a file, not in argv
    assert "s3cr3t" not in text.split("DAGON_ENV_EOF")[2]  # secrets only in the 0600 env file, never in argv
    assert text.rstrip().endswith('exit "$code"')
    assert script.cleanup is not None and f"{kc} delete pod dagon-t-1 --wait=false --ignore-not-found" in script.cleanup
    _syntax_ok(text)
    _syntax_ok(script.cleanup)
    kept = remote_script("kubernetes", {"image": "x", "remove": False, "privileged": True, "context": "edge"}, env={},
                         command="true", name="n", task="t", cpus=1, memory=0, timeout=None)  # fmt: skip
    assert "--context=edge" in kept.command and '"securityContext":{"privileged":true}' in kept.command
    assert "delete pod" not in kept.command.split("code=$?")[1]  # remove=False keeps it; cancellation deletes it
    assert kept.cleanup is not None and "delete pod" in kept.cleanup


def test_remote_nomad_runs_the_task_as_a_batch_job_through_the_nomad_cli() -> None:
    # Not run against Nomad (it cannot be installed here): the job file and commands, to Nomad's documentation.
    script = remote_script("nomad", {"image": "alpine:3", "nomad_address": "http://127.0.0.1:4646", "cpu": 200,
                                     "memory": 128, "datacenter": "edge", "network_mode": "none"},
                           env={"A": "1"}, command='echo "${A}" $HOME', name="dagon-t-1", task="t", cpus=1, memory=0,
                           timeout=None)  # fmt: skip
    text = script.command
    assert "\nexport NOMAD_ADDR=http://127.0.0.1:4646\n" in text
    job = text.split("<<DAGON_JOB_EOF\n")[1].split("DAGON_JOB_EOF")[0]
    assert 'job "dagon-t-1" {' in job and 'datacenters = ["edge"]' in job and 'type = "batch"' in job
    assert 'driver = "docker"' in job and 'image = "alpine:3"' in job and 'volumes = ["$PWD:$PWD"]' in job
    assert 'network_mode = "none"' in job and "cpu = 200" in job and "memory = 128" in job
    assert "attempts = 0" in job  # no restart, no rescheduling: one run per attempt
    assert "nomad job run -detach .dagon/job.nomad.hcl" in text
    assert "nomad job allocs -t '{{range .}}{{.ID}}{{end}}' dagon-t-1" in text
    assert 'nomad alloc logs "$alloc" task' in text and 'nomad alloc logs -stderr "$alloc" task >&2' in text
    assert '{{if eq .Type "Terminated"}}{{.ExitCode}}{{end}}' in text
    assert script.cleanup is not None and "nomad job stop -purge dagon-t-1" in script.cleanup
    _syntax_ok(text)
    # The heredoc expands only $PWD: the job file the shell writes is exact.
    import subprocess

    written = subprocess.run(["bash", "-c", f"cd /tmp && cat <<DAGON_JOB_EOF\n{job}DAGON_JOB_EOF\n"], text=True,
                             capture_output=True, check=True, timeout=30).stdout  # fmt: skip
    assert 'volumes = ["/tmp:/tmp"]' in written and 'work_dir = "/tmp"' in written
    raw = remote_script("nomad", {"driver": "raw_exec"}, env={}, command="true", name="n", task="t", cpus=1,
                        memory=0, timeout=None)  # fmt: skip
    assert 'driver = "raw_exec"' in raw.command and "cd $PWD && " in raw.command


def test_unknown_remote_variants_and_options_are_named() -> None:
    from dagon.agent.runtimes._jobs import OptionError

    with pytest.raises(OptionError, match="'kubernetes', 'nomad'"):
        remote_script("podman", {}, env={}, command="true", name="n", task="t", cpus=1, memory=0, timeout=None)
    with pytest.raises(OptionError, match="unknown kubernetes option"):
        remote_script("kubernetes", {"image": "x", "volumes": ["/a"]}, env={}, command="true", name="n", task="t",
                      cpus=1, memory=0, timeout=None)  # fmt: skip
    with pytest.raises(OptionError, match="image"):
        remote_script("nomad", {}, env={}, command="true", name="n", task="t", cpus=1, memory=0, timeout=None)
