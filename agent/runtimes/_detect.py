"""Which container runtimes work on this host, and building the ones an agent is configured with.

Detection is cheap and side-effect free: Docker counts when its engine answers
``GET /_ping`` (the socket alone is not enough: a stale socket of a stopped
daemon must not be announced), Charliecloud when ``ch-run`` is on ``PATH``,
Apptainer when ``apptainer`` or ``singularity`` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from dagon.agent.runtimes._apptainer import ApptainerRuntime
from dagon.agent.runtimes._base import Runtime
from dagon.agent.runtimes._charliecloud import CharliecloudRuntime
from dagon.agent.runtimes._docker import DEFAULT_DOCKER_URL, DockerRuntime
from dagon.protocol import ConfigError

__all__ = [
    "CONTAINER_RUNTIME_NAMES",
    "REMOTE_RUNTIME_NAMES",
    "build_runtimes",
    "detect_runtimes",
    "docker_answers",
    "select_runtimes",
]

log = logging.getLogger(__name__)

CONTAINER_RUNTIME_NAMES: Final = ("docker", "charliecloud", "apptainer")
# Offered only when named (never detected): they reach beyond this host.
REMOTE_RUNTIME_NAMES: Final = ("slurm", "ssh", "cloud")
_ALWAYS: Final = ("process", "python", "http")  # built in: naming them changes nothing
PING_TIMEOUT: Final = 2.0


async def docker_answers(url: str | None = None) -> bool:
    """Whether a Docker engine answers ``GET /_ping`` with 200 at ``url`` (default ``$DOCKER_HOST``)."""
    url = url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
    parsed = urllib.parse.urlsplit(url)
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            if parsed.scheme == "unix":
                reader, writer = await asyncio.open_unix_connection(parsed.path)
            elif parsed.scheme in ("tcp", "http") and parsed.hostname:
                reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 2375)
            else:
                return False
            try:
                writer.write(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return status.split(b" ", 2)[1:2] == [b"200"]


async def detect_runtimes(*, docker_url: str | None = None) -> list[str]:
    """The container runtimes that work here, in :data:`CONTAINER_RUNTIME_NAMES` order."""
    found = []
    if await docker_answers(docker_url):
        found.append("docker")
    if shutil.which("ch-run"):
        found.append("charliecloud")
    if shutil.which("apptainer") or shutil.which("singularity"):
        found.append("apptainer")
    return found


def build_runtimes(
    names: Sequence[str],
    *,
    home: Path,
    scratch: Path,
    docker_url: str | None = None,
    ssh_key: Path | None = None,
    ssh_known_hosts: Path | None = None,
    ssh_scratch: str = "dagon-scratch",
) -> list[Runtime]:
    """Instances of the named runtimes (``process``, ``python`` and ``http`` are always there).

    Args:
        ssh_key, ssh_known_hosts: the agent's SSH key and trusted host keys (``ssh`` and ``cloud``).
        ssh_scratch: the scratch root on remote hosts.

    Raises:
        ConfigError: a name this agent does not know, or a runtime that cannot work here
            (e.g. ``slurm`` without ``sbatch``).
    """
    runtimes: list[Runtime] = []
    ssh_pool = None
    for name in dict.fromkeys(names):
        if name == "docker":
            runtimes.append(DockerRuntime(url=docker_url, scratch_root=scratch))
        elif name == "charliecloud":
            runtimes.append(CharliecloudRuntime(scratch_root=scratch))
        elif name == "apptainer":
            runtimes.append(ApptainerRuntime(cache=home / "sif-cache"))
        elif name == "slurm":
            from dagon.agent.runtimes._slurm import SlurmRuntime

            runtimes.append(SlurmRuntime())
        elif name in ("ssh", "cloud"):
            ssh_pool = ssh_pool or _ssh_pool(ssh_key, ssh_known_hosts)
            runtimes.append(_remote_runtime(name, ssh_pool, home, ssh_scratch))
        elif name not in _ALWAYS:
            known = ", ".join((*CONTAINER_RUNTIME_NAMES, *REMOTE_RUNTIME_NAMES))
            raise ConfigError(f"unknown runtime {name!r} in runtimes: use {known}, 'auto' (detect) or 'none'")
    return runtimes


def _ssh_pool(key: Path | None, known_hosts: Path | None) -> Any:
    try:
        import asyncssh  # noqa: F401 - checked here so a missing extra is a configuration error
    except ImportError:
        raise ConfigError("the ssh and cloud runtimes need asyncssh: pip install 'dagon-engine[ssh]'") from None
    from dagon.agent.runtimes._ssh_pool import SshPool

    return SshPool(known_hosts=known_hosts or Path.home() / ".ssh" / "known_hosts", default_key=key)


def _remote_runtime(name: str, pool: Any, home: Path, scratch: str) -> Runtime:
    from dagon.agent.runtimes._ssh import SshRuntime

    if name == "ssh":
        return SshRuntime(pool=pool, remote_scratch=scratch)
    from dagon.agent.runtimes._cloud import CloudRuntime

    return CloudRuntime(ssh=SshRuntime(pool=pool, remote_scratch=scratch), state=home / "cloud-instances.json")


async def select_runtimes(
    names: Sequence[str] | None,
    *,
    home: Path,
    scratch: Path,
    docker_url: str | None = None,
    ssh_key: Path | None = None,
    ssh_known_hosts: Path | None = None,
    ssh_scratch: str = "dagon-scratch",
) -> list[Runtime]:
    """The configured runtimes plus ``http``; ``None`` (or ``["auto"]``) detects container runtimes,
    ``[]`` means none besides the built-in ones.

    Raises:
        ConfigError: an unknown name, or a runtime that cannot work here.
    """
    if names is None or list(names) == ["auto"]:
        names = await detect_runtimes(docker_url=docker_url)
        log.info("detected container runtimes: %s", ", ".join(names) or "none")
    from dagon.agent.runtimes._http import HttpRuntime

    built = build_runtimes(
        names, home=home, scratch=scratch, docker_url=docker_url, ssh_key=ssh_key, ssh_known_hosts=ssh_known_hosts,
        ssh_scratch=ssh_scratch,
    )  # fmt: skip
    return [*built, HttpRuntime()]
