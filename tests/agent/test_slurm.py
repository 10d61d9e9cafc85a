"""The Slurm runtime against a real single-node Slurm (munged, slurmctld, slurmd started per module)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _slurm import SlurmCluster, private_slurm

from dagon.agent.runtimes import Execution, Outcome
from dagon.agent.runtimes._slurm import SlurmRuntime, _earlier_jobs, _script_text, sbatch_argv
from dagon.agent.runtimes._slurm_poll import _from_jobcomp, parse_exit
from dagon.protocol import ConfigError, ResultStatus, RunId, TaskAssignment, TaskName

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with private_slurm(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def execution(
    tmp: Path, command: str, *, task: str = "t", timeout: float | None = None, **options: object
) -> Execution:
    workdir = tmp / "scratch" / "run" / f"{task}-1"
    (workdir / ".dagon").mkdir(parents=True)
    a = TaskAssignment(
        run=RunId("run"), workflow="wf", task=TaskName(task), attempt=1, runtime="slurm", command=command,
        timeout=timeout, runtime_options=dict(options),
    )  # fmt: skip
    env = {"DAGON_TASK": task, "GREETING": "hello from the agent"}
    return Execution(a, command, workdir, env, workdir / ".dagon" / "stdout", workdir / ".dagon" / "stderr")


def job_of(ex: Execution) -> str:
    return str(json.loads((ex.workdir / ".dagon" / "slurm-job").read_text())["job"])


async def wait_running(slurm: SlurmCluster, ex: Execution) -> str:
    while not (ex.workdir / ".dagon" / "slurm-job").exists():
        await asyncio.sleep(0.05)
    job = job_of(ex)
    while (await asyncio.to_thread(slurm.job_state, job)) != "RUNNING":
        await asyncio.sleep(0.1)
    return job


async def queued(slurm: SlurmCluster, job: str) -> str:
    """What plain ``squeue`` (pending and running jobs only) says about ``job``."""
    return (await asyncio.to_thread(slurm.squeue, "--noheader", f"--jobs={job}", "--format=%i")).strip()


async def test_a_job_runs_in_the_scratch_directory_with_the_task_env(slurm: SlurmCluster, tmp_path: Path) -> None:
    agent_env = {**slurm.env, "DAGON_SECRET_PW": "hunter2"}  # the agent's own secrets stay with the agent
    runtime = SlurmRuntime(env=agent_env, min_interval=0.2, max_interval=1.0)
    ex = execution(tmp_path, 'echo "$GREETING" > out.txt; env > env.txt; echo to-stdout', partition="debug", ntasks=1,
                   memory=100, time=5, comment="dagon test")  # fmt: skip
    outcome = await runtime.run(ex)
    await runtime.aclose()
    assert outcome.status is ResultStatus.SUCCEEDED, outcome
    assert outcome.exit_code == 0
    assert (ex.workdir / "out.txt").read_text() == "hello from the agent\n"
    assert "hunter2" not in (ex.workdir / "env.txt").read_text()
    assert "SLURM_JOB_ID=" in (ex.workdir / "env.txt").read_text()
    assert (ex.stdout).read_text().startswith("to-stdout\n")
    fields = (await asyncio.to_thread(
        subprocess.run, ["scontrol", "show", "job", "--oneliner", job_of(ex)], env=slurm.env, capture_output=True,
        text=True,
    )).stdout  # fmt: skip
    assert "Partition=debug" in fields and "MinMemoryNode=100M" in fields and "TimeLimit=00:05:00" in fields
    assert f"WorkDir={ex.workdir}" in fields
    assert oct((ex.workdir / ".dagon" / "job.sh").stat().st_mode & 0o777) == "0o700"


async def test_a_failing_job_fails_with_its_exit_code_and_stderr(slurm: SlurmCluster, tmp_path: Path) -> None:
    runtime = SlurmRuntime(env=slurm.env, min_interval=0.2, max_interval=1.0)
    outcome = await runtime.run(execution(tmp_path, "echo 'disk full' >&2; exit 3"))
    await runtime.aclose()
    assert outcome.status is ResultStatus.FAILED
    assert outcome.exit_code == 3
    assert outcome.stderr_tail == "disk full\n"
    assert "exit code 3" in outcome.error


async def test_a_timeout_cancels_the_job(slurm: SlurmCluster, tmp_path: Path) -> None:
    runtime = SlurmRuntime(env=slurm.env, min_interval=0.2, max_interval=1.0)
    ex = execution(tmp_path, "sleep 300", timeout=3)
    outcome = await runtime.run(ex)
    await runtime.aclose()
    assert outcome.status is ResultStatus.TIMEOUT
    assert "timeout" in outcome.error
    job = job_of(ex)
    assert await queued(slurm, job) == ""
    assert slurm.job_state(job) == "CANCELLED"


async def test_cancelling_the_attempt_scancels_the_job(slurm: SlurmCluster, tmp_path: Path) -> None:
    runtime = SlurmRuntime(env=slurm.env, min_interval=0.2, max_interval=1.0)
    ex = execution(tmp_path, "sleep 300")
    task = asyncio.create_task(runtime.run(ex))
    job = await wait_running(slurm, ex)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()  # a second cancellation does not abandon the scancel
    with pytest.raises(asyncio.CancelledError):
        await task
    await runtime.aclose()
    assert await queued(slurm, job) == ""
    assert slurm.job_state(job) == "CANCELLED"


async def test_a_job_cancelled_outside_dagon_is_a_failure_with_that_cause(slurm: SlurmCluster, tmp_path: Path) -> None:
    runtime = SlurmRuntime(env=slurm.env, min_interval=0.2, max_interval=1.0)
    ex = execution(tmp_path, "sleep 300")
    task = asyncio.create_task(runtime.run(ex))
    job = await wait_running(slurm, ex)
    await asyncio.to_thread(subprocess.run, ["scancel", job], env=slurm.env, check=True)
    outcome = await task
    await runtime.aclose()
    assert outcome.status is ResultStatus.FAILED
    assert "cancelled outside dagon" in outcome.error


async def test_many_jobs_are_followed_by_one_batched_poller(slurm: SlurmCluster, tmp_path: Path) -> None:
    runtime = SlurmRuntime(env=slurm.env, min_interval=0.2, max_interval=1.0)
    executions = [execution(tmp_path, f"sleep 1; echo {i} > n.txt", task=f"t{i}") for i in range(6)]
    outcomes = await asyncio.gather(*(runtime.run(ex) for ex in executions))
    await runtime.aclose()
    assert [o.status for o in outcomes] == [ResultStatus.SUCCEEDED] * 6
    assert [(ex.workdir / "n.txt").read_text() for ex in executions] == [f"{i}\n" for i in range(6)]
    # One squeue call covers every job (jobs end ~1 s after starting, the poller wakes
    # at least every second): six separate pollers would have needed >= 6 calls each.
    assert runtime.tracker.polls < 6 * 6


_RESTARTABLE = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from agent.test_slurm import execution
from dagon.agent.runtimes._slurm import SlurmRuntime
ex = execution(Path({tmp!r}), "sleep 4; echo done > result.txt; exit 7")
asyncio.run(SlurmRuntime().run(ex))
"""


async def test_a_restarted_agent_reattaches_to_its_job(slurm: SlurmCluster, tmp_path: Path) -> None:
    # The first "agent" is a separate process, SIGKILLed while its job runs: nothing scancels.
    tests = str(Path(__file__).parents[1])
    script = _RESTARTABLE.format(tests=tests, tmp=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**slurm.env, "PYTHONPATH": tests})
    workdir = tmp_path / "scratch" / "run" / "t-1"
    while not (workdir / ".dagon" / "slurm-job").exists():
        assert proc.poll() is None, "the first agent process died before submitting"
        await asyncio.sleep(0.05)
    job = str(json.loads((workdir / ".dagon" / "slurm-job").read_text())["job"])
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    assert slurm.job_state(job) in ("PENDING", "RUNNING")
    # The restarted agent runs the same attempt again: it follows the recorded job.
    a = TaskAssignment(RunId("run"), "wf", TaskName("t"), 1, "slurm", "sleep 4; echo done > result.txt; exit 7")
    again = Execution(a, a.command, workdir, {}, workdir / ".dagon" / "stdout", workdir / ".dagon" / "stderr")
    runtime = SlurmRuntime(env=slurm.env, min_interval=0.2, max_interval=1.0)
    outcome = await runtime.run(again)
    await runtime.aclose()
    assert outcome.exit_code == 7 and outcome.status is ResultStatus.FAILED
    assert job_of(again) == job  # no second submission
    assert (workdir / "result.txt").read_text() == "done\n"
    jobs = await asyncio.to_thread(slurm.squeue, "--noheader", "--states=all", "--name=dagon-t", "--format=%i")
    assert job in jobs.split()


async def test_a_new_attempt_after_a_restart_adopts_the_earlier_job(slurm: SlurmCluster, tmp_path: Path) -> None:
    # Attempt 1 ran on an agent that was SIGKILLed; the coordinator sent attempt 2.
    tests = str(Path(__file__).parents[1])
    proc = subprocess.Popen([sys.executable, "-c", _RESTARTABLE.format(tests=tests, tmp=str(tmp_path))],
                            env={**slurm.env, "PYTHONPATH": tests})  # fmt: skip
    first = tmp_path / "scratch" / "run" / "t-1"
    while not (first / ".dagon" / "slurm-job").exists():
        assert proc.poll() is None, "the first agent process died before submitting"
        await asyncio.sleep(0.05)
    job = str(json.loads((first / ".dagon" / "slurm-job").read_text())["job"])
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    command = "sleep 4; echo done > result.txt; exit 7"
    second = tmp_path / "scratch" / "run" / "t-2"
    (second / ".dagon").mkdir(parents=True)
    a = TaskAssignment(RunId("run"), "wf", TaskName("t"), 2, "slurm", command)
    runtime = SlurmRuntime(env=slurm.env, min_interval=0.2, max_interval=1.0)
    outcome = await runtime.run(Execution(a, command, second, {}, second / ".dagon" / "stdout",
                                          second / ".dagon" / "stderr"))  # fmt: skip
    await runtime.aclose()
    assert outcome.exit_code == 7 and outcome.status is ResultStatus.FAILED
    assert (second / "result.txt").read_text() == "done\n"  # the adopted job's output, now in attempt 2
    jobs = await asyncio.to_thread(slurm.squeue, "--noheader", "--states=all", "--name=dagon-t", "--format=%i")
    assert jobs.split().count(job) == 1
    assert json.loads((second / ".dagon" / "slurm-job").read_text())["job"] == job
    # Only the same script is the same work.
    assert _earlier_jobs(tmp_path / "scratch" / "run" / "t-3", 3, _script_text([], command)) != []
    assert _earlier_jobs(tmp_path / "scratch" / "run" / "t-3", 3, _script_text([], "echo other")) == []
    assert _earlier_jobs(tmp_path / "scratch" / "run" / "t-1", 1, _script_text([], command)) == []


def test_missing_sbatch_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="slurm runtime needs sbatch on PATH") as info:
        SlurmRuntime(env={"PATH": "/nonexistent"})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partitoin": "debug"}, "unknown slurm option"),
        ({"memory": "lots"}, "memory"),
        ({"time": True}, "time"),
        ({"partition": "debug\nrm -rf /"}, "one line"),
        ({"extra": ["echo not an option"]}, "sbatch option"),
        ({"nodes": "two"}, "nodes"),
        ({"ntasks": 0}, "ntasks"),
    ],
)
def test_bad_options_name_the_option(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    from dagon.agent.runtimes._jobs import OptionError

    with pytest.raises(OptionError, match=message):
        sbatch_argv("sbatch", execution(tmp_path, "true", **options))


def test_options_become_sbatch_arguments(tmp_path: Path) -> None:
    ex = execution(tmp_path, "true", partition="gpu", ntasks=4, nodes="1-2", ntasks_per_node=2, memory="4G",
                   account="proj", qos="high", gres="gpu:1", extra=["--exclusive", "#SBATCH --requeue"])  # fmt: skip
    argv, lines = sbatch_argv("sbatch", ex)
    for arg in ("--partition=gpu", "--ntasks=4", "--nodes=1-2", "--ntasks-per-node=2", "--mem=4G",
                "--account=proj", "--qos=high", "--gres=gpu:1", f"--chdir={ex.workdir}"):  # fmt: skip
        assert arg in argv
    assert lines == ["#SBATCH --exclusive", "#SBATCH --requeue"]


def test_exit_codes_and_the_completion_log_are_parsed(tmp_path: Path) -> None:
    assert parse_exit("3:0") == (3, 0)
    assert parse_exit("0:15") == (143, 15)
    log = tmp_path / "jobcomp.log"
    log.write_text(
        "JobId=41 UserId=root(0) JobState=COMPLETED ExitCode=0:0\n"
        "JobId=42 UserId=root(0) JobState=OUT_OF_MEMORY ExitCode=0:9\n"
    )
    end = _from_jobcomp(log, "42")
    assert end is not None and end.state == "OUT_OF_MEMORY" and end.exit_code == 137
    assert _from_jobcomp(log, "4") is None


async def test_a_job_the_controller_refuses_is_an_error_naming_sbatch(slurm: SlurmCluster, tmp_path: Path) -> None:
    runtime = SlurmRuntime(env=slurm.env)
    outcome: Outcome = await runtime.run(execution(tmp_path, "true", partition="nosuchpartition"))
    await runtime.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert outcome.error.startswith("sbatch refused the job:") and "partition" in outcome.error.lower()
    assert (tmp_path / "scratch" / "run" / "t-1" / ".dagon" / "job.sh").exists()


async def test_resuming_an_attempt_whose_job_slurm_forgot_is_an_error(slurm: SlurmCluster, tmp_path: Path) -> None:
    runtime = SlurmRuntime(env=slurm.env, min_interval=0.2, max_interval=1.0)
    ex = execution(tmp_path, "true")
    assert not runtime.resumable(ex)
    (ex.workdir / ".dagon" / "slurm-job").write_text(json.dumps({"job": "999999", "submitted": 0}))
    assert runtime.resumable(ex)
    outcome = await runtime.resume(ex)
    await runtime.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert "slurm job 999999" in outcome.error and "unknown to Slurm" in outcome.error
    assert not (ex.workdir / ".dagon" / "job.sh").exists()  # resume never submits


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_how_jobs_ended_comes_from_scontrol_and_else_the_completion_log(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    """FAILED, TIMEOUT (Slurm's own time limit) and an outside scancel, read from ``scontrol show
    job`` and — once slurmctld has forgotten the job (emulated: a ``scontrol`` that answers what it
    answers for a purged job) — from the job completion log, as when no accounting runs."""
    from dagon.agent.runtimes._slurm import _outcome
    from dagon.agent.runtimes._slurm_poll import JobTracker

    def sbatch(*args: str) -> str:
        done = subprocess.run(["sbatch", "--parsable", f"--chdir={tmp_path}", "--output=/dev/null", *args],
                              env=slurm.env, capture_output=True, text=True, check=True, timeout=30)  # fmt: skip
        return done.stdout.strip().split(";")[0]

    failed = sbatch("--wrap", "exit 3")
    timed_out = sbatch("--time=1", "--wrap", "sleep 300")  # Slurm's limit: one minute
    cancelled = sbatch("--wrap", "sleep 300")
    while slurm.job_state(cancelled) != "RUNNING":
        await asyncio.sleep(0.2)
    await asyncio.to_thread(subprocess.run, ["scancel", cancelled], env=slurm.env, check=True)
    bins = {"squeue": "squeue", "scontrol": "scontrol"}
    live = JobTracker(env=slurm.env, bins=bins, min_interval=0.5, max_interval=2.0)
    async with asyncio.timeout(200):
        await asyncio.gather(*(live.wait_ended(j) for j in (failed, timed_out, cancelled)))
    await live.aclose()
    purged = tmp_path / "bin" / "scontrol"
    purged.parent.mkdir()
    purged.write_text(
        '#!/bin/sh\nif [ "$1 $2" = "show job" ]; then echo "slurm_load_jobs error: Invalid job id specified" >&2;'
        ' exit 1; fi\nexec scontrol "$@"\n'
    )
    purged.chmod(0o755)
    forgotten = JobTracker(env=slurm.env, bins={**bins, "scontrol": str(purged)})
    expected = {
        failed: ("FAILED", 3, ResultStatus.FAILED, "exit code 3"),
        timed_out: ("TIMEOUT", None, ResultStatus.TIMEOUT, "Slurm time limit (TIMEOUT)"),
        cancelled: ("CANCELLED", None, ResultStatus.FAILED, "cancelled outside dagon (scancel)"),
    }
    for tracker in (live, forgotten):
        for job, (state, code, status, message) in expected.items():
            end = await tracker.end_of(job)
            assert end is not None and end.state.split()[0] == state, (tracker is forgotten, job, end)
            assert end.source == ("jobcomp" if tracker is forgotten else "scontrol"), end
            if code is not None:
                assert end.exit_code == code
            outcome = _outcome(job, end, "")
            assert outcome.status is status and message in outcome.error, outcome
    assert f"JobId={timed_out} " in slurm.jobcomp.read_text()  # the second tracker did read the log
