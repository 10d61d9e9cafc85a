"""SSH connections for agentless execution: one pooled asyncssh connection per host, verified host keys.

A host's key must be in ``known_hosts`` — it is never accepted on first sight. When it
is not (or it changed), the error names the key the host presented (type and SHA256
fingerprint), so a person can compare it with the host's own
(``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`` there) before adding it.
Connections are kept alive (keepalive probes) and dropped from the pool once closed;
a task on a lost connection fails, the next one connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncssh

__all__ = ["SshError", "SshPool", "SshTarget"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 20.0


class SshError(Exception):
    """An SSH connection could not be made or used; the message is one line saying what to fix."""


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where to log in: host, port, user and the private key file (None: the pool's default).

    ``host_key`` (an OpenSSH public key line, ``ssh-ed25519 AAAA…``) is the one key the
    host may present, instead of ``known_hosts`` — for a cloud instance whose image or
    user data fixes its host key.
    """

    host: str
    port: int = 22
    username: str = ""
    key: Path | None = None
    host_key: str = ""

    def __str__(self) -> str:
        return f"{self.username or getpass.getuser()}@{self.host}:{self.port}"


class SshPool:
    """Pooled, host-key-verified SSH connections (asyncssh).

    Args:
        known_hosts: the OpenSSH ``known_hosts`` file host keys are checked against.
        default_key: private key used when a target names none.
        keepalive: seconds between keepalive probes; a connection is closed after three
            unanswered ones (so a lost host is noticed within ~4x this).
    """

    def __init__(self, *, known_hosts: Path, default_key: Path | None = None, keepalive: float = 15.0) -> None:
        self._known_hosts = Path(known_hosts).expanduser()
        self._default_key = Path(default_key).expanduser() if default_key is not None else None
        self._keepalive = keepalive
        self._conns: dict[SshTarget, asyncssh.SSHClientConnection] = {}
        self._locks: dict[SshTarget, asyncio.Lock] = {}

    def _resolved(self, target: SshTarget) -> SshTarget:
        return SshTarget(
            target.host, target.port, target.username or getpass.getuser(), target.key or self._default_key
        )

    async def connection(self, target: SshTarget) -> asyncssh.SSHClientConnection:
        """An open connection to ``target`` (made once, then shared by every task on that host).

        Raises:
            SshError: unknown or changed host key, refused key, unreachable host.
        """
        target = self._resolved(target)
        async with self._locks.setdefault(target, asyncio.Lock()):
            conn = self._conns.get(target)
            if conn is not None and not conn.is_closed():
                return conn
            conn = await self._connect(target)
            self._conns[target] = conn
            return conn

    def discard(self, target: SshTarget) -> None:
        """Forget (and close) the connection to ``target``, e.g. after it was found broken."""
        conn = self._conns.pop(self._resolved(target), None)
        if conn is not None:
            conn.close()

    async def _connect(self, target: SshTarget) -> asyncssh.SSHClientConnection:
        import asyncssh  # optional extra: only agents with the ssh or cloud runtime need it

        trusted: Any = str(self._known_hosts)
        if target.host_key:
            try:
                trusted = ([asyncssh.import_public_key(target.host_key)], [], [])
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise SshError(
                    f"ssh: the host key given for {target.host} is not an OpenSSH public key: {exc}"
                ) from None
        elif not self._known_hosts.is_file():
            raise SshError(
                f"ssh: known_hosts file {self._known_hosts} does not exist: create it with the host keys of the"
                " hosts tasks run on (ssh_known_hosts= in the agent config)"
            )
        if target.key is None:
            raise SshError(
                f"ssh: no private key for {target}: give keypath= on the task or ssh_key in the agent config"
            )
        if not target.key.is_file():
            raise SshError(f"ssh: private key {target.key} does not exist (keypath= / ssh_key)")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await asyncssh.connect(
                    target.host, target.port, username=target.username, client_keys=[str(target.key)],
                    known_hosts=trusted, config=None, agent_path=None, password=None,
                    kbdint_auth=False, keepalive_interval=self._keepalive, keepalive_count_max=3,
                )  # fmt: skip
        except asyncssh.HostKeyNotVerifiable:
            presented = await _presented_key(target)
            where = "the host key given for it" if target.host_key else str(self._known_hosts)
            raise SshError(
                f"ssh: the host key {target.host}:{target.port} presented ({presented}) is not in"
                f" {where} or differs from it; if that fingerprint is the host's own, add it"
                f" (ssh-keyscan -p {target.port} {target.host} >> {self._known_hosts}) — it is never auto-accepted"
            ) from None
        except asyncssh.PermissionDenied:
            raise SshError(
                f"ssh: {target} refused the key {target.key}: add its public key to that user's"
                " ~/.ssh/authorized_keys, or fix ssh_username= / keypath="
            ) from None
        except asyncssh.KeyImportError as exc:
            raise SshError(f"ssh: cannot read the private key {target.key}: {exc}") from None
        except TimeoutError:
            raise SshError(
                f"ssh: {target.host}:{target.port} did not answer within {CONNECT_TIMEOUT:g} s: check ip= / ssh_port="
                " and that sshd runs there"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise SshError(
                f"ssh: cannot reach {target.host}:{target.port} ({reason}): check ip= / ssh_port= and that sshd runs"
                " there"
            ) from None

    async def aclose(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.wait_closed()


async def _presented_key(target: SshTarget) -> str:
    """Type and SHA256 fingerprint of the key the host presents (read, never trusted)."""
    import asyncssh

    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            key = await asyncssh.get_server_host_key(target.host, target.port, config=None)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        return f"fingerprint unavailable: {exc}"
    if key is None:
        return "no key"
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"
