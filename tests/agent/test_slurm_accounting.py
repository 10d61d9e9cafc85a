"""How Slurm jobs ended, from ``sacct``: the private cluster with real accounting (mariadbd + slurmdbd).

Only this module pays for the accounting daemons; the other Slurm tests run on the
cluster without accounting, where ``scontrol show job`` and the job completion log answer.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _slurm import SlurmCluster, private_slurm

from dagon.agent.runtimes._slurm import SlurmRuntime
from dagon.agent.runtimes._slurm_poll import JobTracker
from dagon.protocol import ResultStatus

from .test_slurm import execution, job_of, wait_running

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def accounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with private_slurm(tmp_path_factory.mktemp("accounted"), accounting=True) as cluster:
        yield cluster


def sacct(cluster: SlurmCluster, job: str) -> str:
    """What ``sacct`` itself records for ``job`` (``STATE|EXIT:SIGNAL``)."""
    return subprocess.run(
        ["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job}", "--format=State,ExitCode"],
        env=cluster.env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip


@pytest.mark.timeout(300)
async def test_jobs_that_fail_time_out_or_are_cancelled_end_as_sacct_says(
    accounted: SlurmCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job exiting 3, one killed by Slurm's own one-minute limit and one scancelled outside
    dagon, run through the real runtime: each outcome comes from ``sacct`` (the runtime logs
    the source), and sacct's own records agree."""
    caplog.set_level(logging.INFO, logger="dagon.agent.runtimes._slurm")
    runtime = SlurmRuntime(env=accounted.env, min_interval=0.3, max_interval=2.0)
    failing = execution(tmp_path, "echo 'disk full' >&2; exit 3", task="failing")
    limited = execution(tmp_path, "sleep 300", task="limited", time=1)  # Slurm's limit: one minute
    outside = execution(tmp_path, "sleep 300", task="outside")
    runs = [asyncio.create_task(runtime.run(ex)) for ex in (failing, limited, outside)]
    job = await wait_running(accounted, outside)
    await asyncio.to_thread(subprocess.run, ["scancel", job], env=accounted.env, check=True, timeout=30)
    async with asyncio.timeout(240):
        fail, timeout, cancel = await asyncio.gather(*runs)
    await runtime.aclose()

    assert fail.status is ResultStatus.FAILED and fail.exit_code == 3, fail
    assert "exit code 3" in fail.error and fail.stderr_tail == "disk full\n"
    assert timeout.status is ResultStatus.TIMEOUT and "Slurm time limit (TIMEOUT)" in timeout.error, timeout
    assert cancel.status is ResultStatus.FAILED and "cancelled outside dagon (scancel)" in cancel.error, cancel
    sources = {r.getMessage() for r in caplog.records if "(from " in r.getMessage()}
    for ex, state in ((failing, "FAILED"), (limited, "TIMEOUT"), (outside, "CANCELLED")):
        assert any(m.startswith(f"slurm: job {job_of(ex)} ended {state}") and m.endswith("(from sacct)")
                   for m in sources), (job_of(ex), sources)  # fmt: skip
    assert sacct(accounted, job_of(failing)) == "FAILED|3:0"
    assert sacct(accounted, job_of(limited)).startswith("TIMEOUT|")
    assert sacct(accounted, job_of(outside)).startswith("CANCELLED")


async def test_a_job_dagon_cancels_on_its_timeout_is_recorded_cancelled_in_sacct(
    accounted: SlurmCluster, tmp_path: Path
) -> None:
    """dagon's own timeout scancels the job; asked afterwards, the tracker answers from sacct."""
    runtime = SlurmRuntime(env=accounted.env, min_interval=0.2, max_interval=1.0)
    ex = execution(tmp_path, "sleep 300", timeout=3)
    outcome = await runtime.run(ex)
    await runtime.aclose()
    assert outcome.status is ResultStatus.TIMEOUT and "timeout" in outcome.error
    tracker = JobTracker(env=accounted.env, bins={"squeue": "squeue", "scontrol": "scontrol", "sacct": "sacct"})
    end = await tracker.end_of(job_of(ex))
    assert end is not None and end.source == "sacct" and end.state == "CANCELLED", end
