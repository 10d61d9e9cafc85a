"""Slurm accounting for the private test cluster: its own mariadbd and slurmdbd.

``private_slurm(tmp, accounting=True)`` (``_slurm.py``) uses this: a MariaDB server
initialised into the cluster's temporary directory (unix socket there, TCP on a free
port of 127.0.0.1, run as root), a database user for slurmdbd, and slurmdbd itself on a
free port (its ``slurmdbd.conf`` sits next to ``slurm.conf``, mode 600, as slurmdbd
insists). Both run in the foreground as children of the test and are stopped by PID.
slurmdbd has no ``NoInAddrAny``: it listens on every address, but only the cluster's
commands (through ``SLURM_CONF``) ever talk to it, over 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from _broker import free_port, stop_process

__all__ = ["ACCOUNTING_MISSING", "accounting_binaries", "accounting_conf", "private_accounting", "wait_ready"]

ACCOUNTING_MISSING = "Slurm accounting (slurmdbd, sacct, sacctmgr) or MariaDB is not installed; run .ci/setup"
_BINARIES = ("mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "sacctmgr", "sacct")
_DB_PASSWORD = "dagon-test"  # a throwaway server on 127.0.0.1 that lives as long as the test


def accounting_binaries() -> dict[str, str] | None:
    """Paths of MariaDB's and slurmdbd's programs, or None when one is missing."""
    found: dict[str, str] = {}
    for name in _BINARIES:
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
        )
        if path is None:
            return None
        found[name] = path
    return found


def accounting_conf(dbd_port: int, munge_socket: Path) -> str:
    """The lines of ``slurm.conf`` that send job records to the private slurmdbd.

    ``AccountingStoragePass`` names the munge socket for connections to slurmdbd
    (``AuthInfo`` covers only slurmctld and slurmd; without it sacct and sacctmgr try
    the system's munged).
    """
    return (
        "AccountingStorageType=accounting_storage/slurmdbd\n"
        "AccountingStorageHost=localhost\n"
        f"AccountingStoragePort={dbd_port}\n"
        f"AccountingStoragePass={munge_socket}\n"
    )


def _dbd_conf(root: Path, *, dbd_port: int, db_port: int, socket_path: Path) -> str:
    return f"""\
AuthType=auth/munge
AuthInfo=socket={socket_path}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={root}/slurmdbd.pid
LogFile={root}/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass={_DB_PASSWORD}
StorageLoc=slurm_acct_db
"""


def wait_ready(what: str, ready: object, procs: list[subprocess.Popen[bytes]], log: Path, timeout: float = 40) -> None:
    """Poll ``ready()`` until it is true; a process of ``procs`` that exits first, or the timeout, is an
    error quoting the end of ``log`` (the daemons' own words)."""
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: a daemon exited ({proc.args!r}): {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s: {_tail(log)}")
        time.sleep(0.2)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-800:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def private_accounting(
    root: Path, *, env: dict[str, str], dbd_port: int, munge_socket: Path, cluster: str
) -> Iterator[None]:
    """Start mariadbd and slurmdbd under ``root``, register ``cluster``; stop both at the end.

    Must run after munged (slurmdbd authenticates with it) and before slurmctld (which
    registers with slurmdbd when it starts). ``env`` carries ``SLURM_CONF``: ``sacctmgr``
    finds slurmdbd through it and slurmdbd finds its ``slurmdbd.conf`` next to it.
    """
    bins = accounting_binaries()
    assert bins is not None, ACCOUNTING_MISSING
    data, db_sock, db_port = root / "mariadb", root / "mariadb.sock", free_port()
    subprocess.run(
        [bins["mariadb-install-db"], "--no-defaults", f"--datadir={data}", "--user=root",
         "--auth-root-authentication-method=socket", "--skip-test-db"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db_log = root / "mariadbd.log"
        with db_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [bins["mariadbd"], "--no-defaults", f"--datadir={data}", "--user=root", f"--socket={db_sock}",
                 f"--port={db_port}", "--bind-address=127.0.0.1", f"--pid-file={root}/mariadbd.pid",
                 "--skip-name-resolve", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
                 "--skip-log-bin"],
                stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip

        def sql(statement: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([bins["mariadb"], "--no-defaults", f"--socket={db_sock}", "-uroot", "-e", statement],
                                  capture_output=True, text=True, check=False, timeout=30)  # fmt: skip

        wait_ready("mariadbd answering", lambda: sql("SELECT 1").returncode == 0, procs[:1], db_log, timeout=60)
        done = sql(
            f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{_DB_PASSWORD}';"
            " GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        if done.returncode != 0:
            raise RuntimeError(f"cannot create slurmdbd's database user: {done.stderr.strip()}")
        conf = root / "slurmdbd.conf"
        conf.write_text(_dbd_conf(root, dbd_port=dbd_port, db_port=db_port, socket_path=munge_socket))
        os.chmod(conf, 0o600)
        procs.append(subprocess.Popen([bins["slurmdbd"], "-D"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))  # fmt: skip

        def sacctmgr(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([bins["sacctmgr"], "-i", *args], env=env, capture_output=True, text=True,
                                  check=False, timeout=30)  # fmt: skip

        wait_ready("slurmdbd answering", lambda: sacctmgr("list", "cluster").returncode == 0, procs[1:2],
              root / "slurmdbd.log", timeout=60)  # fmt: skip
        for args in (("add", "cluster", cluster), ("add", "account", "dagon", f"cluster={cluster}"),
                     ("add", "user", "root", "account=dagon", f"cluster={cluster}")):  # fmt: skip
            done = sacctmgr(*args)
            if done.returncode != 0 and "Nothing new added" not in done.stdout + done.stderr:
                raise RuntimeError(f"sacctmgr {' '.join(args)} failed: {(done.stdout + done.stderr).strip()}")
        yield
    finally:
        for proc in reversed(procs):
            stop_process(proc)
