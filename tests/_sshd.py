"""A real OpenSSH sshd on its own address in a network namespace (a remote host for the SSH runtime).

The namespace and bridge come from :class:`integration._netns.Hosts` (a private
10.77.X.0/24 whose gateway address lives in the root namespace, so nothing leaves the
machine). sshd gets its own host key, an authorized client key and a config under a
temporary directory; it is started inside the namespace and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from _broker import missing, stop_process

__all__ = ["SSHD_MISSING", "RemoteHost", "namespaced_sshd", "sshd_binary", "start_sshd"]

SSHD_MISSING = "OpenSSH server (sshd) or iproute2 not installed, or not root; run .ci/setup as root"


def sshd_binary() -> str | None:
    return shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)


@dataclass
class RemoteHost:
    """An sshd at ``address:port``; ``client_key`` may log in as root; ``known_hosts`` lists its host key."""

    address: str
    port: int
    work: Path
    client_key: Path
    known_hosts: Path
    host_key: asyncssh.SSHKey
    namespace: str
    bridge_port: str  # the root-namespace end of the host's veth pair (down = host unreachable)
    gateway: str  # the bridge's address in the root namespace (where a broker the host reaches can listen)

    def known_hosts_line(self, port: int | None = None) -> str:
        port = self.port if port is None else port
        name = self.address if port == 22 else f"[{self.address}]:{port}"
        public = self.host_key.export_public_key().decode().split()
        return f"{name} {public[0]} {public[1]}\n"


def start_sshd(
    binary: str, work: Path, namespace: str, address: str, port: int, *, private: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start sshd inside ``namespace`` on ``address:port`` with the keys under ``work``; wait until it listens.

    ``private`` directories (``/etc``, ``/var/lib`` …) are copy-on-write for sshd and everything
    started over SSH: an overlay in sshd's own mount namespace (``ip netns exec`` makes one),
    whose changes land in ``work/overlay/<dir>/upper`` and never in the machine's directory —
    for tests that install system files (a user, a systemd unit) on the "remote host".
    """
    conf = work / f"sshd_config_{port}"
    conf.write_text(
        f"ListenAddress {address}\nPort {port}\nHostKey {work / 'host_key'}\nUsePAM no\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nAuthorizedKeysFile {work / 'authorized_keys'}\n"
        f"PidFile {work / f'sshd_{port}.pid'}\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\nClientAliveInterval 1\nClientAliveCountMax 3\nMaxStartups 50\n"
        "MaxSessions 50\n"
    )
    log = work / f"sshd_{port}.log"
    command = [binary, "-D", "-e", "-f", str(conf)]
    if private:
        mounts = []
        for directory in private:
            layer = work / "overlay" / directory.strip("/").replace("/", "_")
            (layer / "upper").mkdir(parents=True, exist_ok=True)
            (layer / "work").mkdir(exist_ok=True)
            mounts.append(f"mount -t overlay overlay -o lowerdir={directory},upperdir={layer / 'upper'},"
                          f"workdir={layer / 'work'} {directory}")  # fmt: skip
        command = ["sh", "-c", " && ".join([*mounts, 'exec "$@"']), "sh", *command]
    with log.open("wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", namespace, *command], stderr=out)
    deadline = time.monotonic() + 30  # a loaded 2-core machine is slow to bring veth pairs up
    while True:
        with contextlib.suppress(OSError), socket.create_connection((address, port), 0.5):
            return proc
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_process(proc)
            raise RuntimeError(f"sshd did not start: {log.read_text()[-500:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def namespaced_sshd(tmp: Path, *, port: int = 22, private: tuple[str, ...] = ()) -> Iterator[RemoteHost]:
    from integration._netns import Hosts, available

    binary = sshd_binary()
    why = available()
    if binary is None or why is not None:
        missing(why or SSHD_MISSING)
    assert binary is not None
    work = tmp / "sshd"
    work.mkdir(parents=True)
    host = asyncssh.generate_private_key("ssh-ed25519")
    host.write_private_key(str(work / "host_key"))
    os.chmod(work / "host_key", 0o600)
    client = asyncssh.generate_private_key("ssh-ed25519")
    client.write_private_key(str(work / "client_key"))
    os.chmod(work / "client_key", 0o600)
    client.write_public_key(str(work / "authorized_keys"))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    hosts = Hosts(1).open()
    proc = None
    try:
        address = hosts.address(0)
        proc = start_sshd(binary, work, hosts.namespaces[0], address, port, private=private)
        remote = RemoteHost(address, port, work, work / "client_key", work / "known_hosts", host,
                            hosts.namespaces[0], f"dgv{hosts.suffix}0", hosts.gateway)  # fmt: skip
        remote.known_hosts.write_text(remote.known_hosts_line())
        yield remote
    finally:
        stop_process(proc)
        hosts.close()
