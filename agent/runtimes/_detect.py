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
from typing import Final

from dagon.agent.runtimes._apptainer import ApptainerRuntime
from dagon.agent.runtimes._base import Runtime
from dagon.agent.runtimes._charliecloud import CharliecloudRuntime
from dagon.agent.runtimes._docker import DEFAULT_DOCKER_URL, DockerRuntime
from dagon.protocol import ConfigError

__all__ = ["CONTAINER_RUNTIME_NAMES", "build_runtimes", "detect_runtimes", "docker_answers", "select_runtimes"]

log = logging.getLogger(__name__)

CONTAINER_RUNTIME_NAMES: Final = ("docker", "charliecloud", "apptainer")
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


def build_runtimes(names: Sequence[str], *, home: Path, scratch: Path, docker_url: str | None = None) -> list[Runtime]:
    """Instances of the named container runtimes.

    Raises:
        ConfigError: a name is not a container runtime this agent knows.
    """
    runtimes: list[Runtime] = []
    for name in dict.fromkeys(names):
        if name == "docker":
            runtimes.append(DockerRuntime(url=docker_url, scratch_root=scratch))
        elif name == "charliecloud":
            runtimes.append(CharliecloudRuntime(scratch_root=scratch))
        elif name == "apptainer":
            runtimes.append(ApptainerRuntime(cache=home / "sif-cache"))
        else:
            raise ConfigError(
                f"unknown runtime {name!r} in runtimes: use {', '.join(CONTAINER_RUNTIME_NAMES)},"
                " 'auto' (detect) or 'none'"
            )
    return runtimes


async def select_runtimes(
    names: Sequence[str] | None, *, home: Path, scratch: Path, docker_url: str | None = None
) -> list[Runtime]:
    """The configured runtimes; ``None`` (or ``["auto"]``) detects them, ``[]`` means none.

    Raises:
        ConfigError: an unknown name.
    """
    if names is None or list(names) == ["auto"]:
        names = await detect_runtimes(docker_url=docker_url)
        log.info("detected container runtimes: %s", ", ".join(names) or "none")
    return build_runtimes(names, home=home, scratch=scratch, docker_url=docker_url)
