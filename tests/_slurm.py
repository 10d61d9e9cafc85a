"""A private single-node Slurm cluster for tests: its own munged, slurmctld and slurmd.

Everything lives under one temporary directory: the munge key and socket, the
``slurm.conf`` (``SLURM_CONF`` points the client commands at it), state, spool and
logs; the daemons listen on free ports of 127.0.0.1 only (without
``CommunicationParameters=NoInAddrAny,NoCtldInAddrAny`` both bind 0.0.0.0, whatever
address the configuration names). Each daemon runs in the
foreground as a child of the test and is stopped by its PID (never by name).
Recipe: ``ENVIRONMENT.md`` ("Slurm 22.05 single node").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _broker import free_port, missing, stop_process
from _slurmdbd import ACCOUNTING_MISSING, accounting_binaries, accounting_conf, private_accounting, wait_ready

__all__ = ["SLURM_MISSING", "SlurmCluster", "cluster_processes", "private_slurm", "slurm_binaries"]

CLUSTER = "dagon-test"
SLURM_MISSING = "Slurm (slurmctld, slurmd, sbatch) or munge is not installed; run .ci/setup"
_DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "mungekey")


def slurm_binaries() -> dict[str, str] | None:
    """Paths of the daemons and client commands, or None when one is missing."""
    found: dict[str, str] = {}
    for name in _DAEMONS:
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
        )
        if path is None:
            return None
        found[name] = path
    return found


@dataclass
class SlurmCluster:
    """A running private cluster: ``env`` holds ``SLURM_CONF`` (and PATH) for the client commands."""

    root: Path
    conf: Path
    env: dict[str, str]
    jobcomp: Path
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS): where the cluster's network is

    def squeue(self, *args: str) -> str:
        return subprocess.run(
            [*self.prefix, "squeue", *args], env=self.env, capture_output=True, text=True, check=False, timeout=30
        ).stdout

    def job_state(self, job: str) -> str:
        out = subprocess.run(
            [*self.prefix, "scontrol", "show", "job", "-o", job], env=self.env, capture_output=True, text=True,
            check=False, timeout=30,
        ).stdout  # fmt: skip
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return ""


def _conf(root: Path, *, host: str, ctld_port: int, slurmd_port: int, socket_path: Path, dbd_port: int | None) -> str:
    accounting = (
        accounting_conf(dbd_port, socket_path)
        if dbd_port is not None
        else "AccountingStorageType=accounting_storage/none\n"
    )
    return f"""\
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=socket={socket_path}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
{accounting}MinJobAge=300
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldTimeout=30
InactiveLimit=0
KillWait=2
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def cluster_processes(conf: Path) -> list[int]:
    """Live processes of the cluster configured by ``conf``: slurmstepd and its job steps.

    slurmstepd detaches from slurmd (it is meant to outlive a slurmd restart), so stopping
    slurmd leaves it running, re-parented to PID 1. slurmd, its slurmstepds and every job
    started with the test's environment carry ``SLURM_CONF=<conf>`` in their environment,
    which tells them apart from another test's cluster.
    """
    marker = f"SLURM_CONF={conf}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def _stop_leftovers(env: dict[str, str], prefix: tuple[str, ...]) -> None:
    """Cancel every job of the cluster while slurmctld still runs; wait for the queue to empty."""
    subprocess.run([*prefix, "scancel", "--full", "--user=root"], env=env, capture_output=True, check=False,
                   timeout=30)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = subprocess.run([*prefix, "squeue", "--noheader", "--format=%i"], env=env, capture_output=True,
                             text=True, check=False, timeout=30)  # fmt: skip
        if out.returncode != 0 or not out.stdout.strip():
            return
        time.sleep(0.2)


def _kill_detached(conf: Path) -> None:
    """SIGKILL (by PID) what outlived the daemons: slurmstepd and job processes of this cluster."""
    for _ in range(50):
        pids = cluster_processes(conf)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"processes of the test cluster {conf} survive SIGKILL: {cluster_processes(conf)}")


@contextlib.contextmanager
def private_slurm(tmp: Path, *, prefix: tuple[str, ...] = (), accounting: bool = False) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under ``tmp``; yield once the node is idle; stop them.

    ``prefix`` runs the daemons through a command (``ip netns exec NS``): the cluster then
    lives on that namespace's loopback, as a login node's would for jobs submitted over SSH.
    ``accounting`` adds a private mariadbd and slurmdbd (``_slurmdbd.py``): ``sacct`` then
    answers for the cluster's jobs. It costs seconds per cluster; only the sacct tests use it.
    """
    bins = slurm_binaries()
    if bins is None:
        missing(SLURM_MISSING)
    if os.geteuid() != 0:
        missing("the private Slurm cluster needs root (slurmd runs jobs as their submitting user)")
    if accounting and (prefix or accounting_binaries() is None):
        missing(ACCOUNTING_MISSING if not prefix else "the accounting cluster runs on the host's loopback only")
    root = tmp / "slurm"
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key, sock = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    subprocess.run([bins["mungekey"], "--create", "--keyfile", str(key)], check=True, capture_output=True)
    os.chmod(key, 0o600)
    host = socket.gethostname()
    conf = root / "slurm.conf"
    dbd_port = free_port() if accounting else None
    conf.write_text(_conf(root, host=host, ctld_port=free_port(), slurmd_port=free_port(), socket_path=sock,
                          dbd_port=dbd_port))  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen[bytes]] = []
    daemons = contextlib.ExitStack()
    try:
        with (root / "munged.log").open("wb") as out:
            procs.append(subprocess.Popen(
                [bins["munged"], "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                 f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                 f"--seed-file={root}/munge/seed"],
                stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        wait_ready("munged socket", sock.exists, procs, root / "munged.log")
        if dbd_port is not None:
            daemons.enter_context(private_accounting(root, env=env, dbd_port=dbd_port, munge_socket=sock,
                                                     cluster=CLUSTER))  # fmt: skip
        procs.append(subprocess.Popen([*prefix, bins["slurmctld"], "-D", "-i", "-f", str(conf)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        procs.append(subprocess.Popen([*prefix, bins["slurmd"], "-D", "-f", str(conf)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip

        def idle() -> bool:
            out = subprocess.run([*prefix, "sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True,
                                 check=False)  # fmt: skip
            return out.stdout.strip() == "idle"

        wait_ready("the Slurm node becoming idle", idle, procs, root / "slurmctld.log")
        yield SlurmCluster(root=root, conf=conf, env=env, jobcomp=root / "jobcomp.log", prefix=prefix)
    finally:
        if len(procs) == 3 and all(p.poll() is None for p in procs):
            _stop_leftovers(env, prefix)
        for proc in reversed(procs[1:]):
            stop_process(proc)
        daemons.close()  # slurmdbd and mariadbd, after slurmctld has sent what it had
        stop_process(procs[0] if procs else None)
        _kill_detached(conf)
