"""Staging over SFTP (asyncssh) from producers reachable only by SSH (e.g. an HPC login node).

The producing agent announces ``ssh://user@host:port``; the consuming agent logs
in with its own key (``ssh_key``) and verifies the host key against its
``known_hosts`` — never accepting an unknown or changed key. It reads only
regular files inside the producer's task directory (which must belong to a
dagon scratch root), checks each one against the producer's manifest (sha256)
and writes nothing on the remote side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import stat
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagon.agent._layout import INDEX, SCRATCH_MARKER, StagingError, safe_component
from dagon.protocol import StageInput, covers
from dagon.protocol.transport import MANIFEST_FILE, PullStats

__all__ = ["SshAccess", "sftp_pull"]

_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class SshAccess:
    """How this agent logs in to producers' hosts."""

    key: Path
    known_hosts: Path


def _target(url: str) -> tuple[str, int, str]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "ssh" or not parsed.hostname or not parsed.username:
        raise StagingError(f"producer SSH address {url!r} is not ssh://user@host[:port]")
    return parsed.hostname, parsed.port or 22, urllib.parse.unquote(parsed.username)


async def _is_remote_task_dir(sftp: Any, root: str, item: StageInput) -> bool:
    """``root`` is a task directory of a remote scratch root: ``<run>/<task>-<attempt>`` of a marked
    root, or (DAGonStar's layout) a directory of a marked root that the root's record of exactly
    this attempt names (see ``dagon.agent._layout``)."""
    import asyncssh

    parent = posixpath.dirname(root)
    if await sftp.exists(posixpath.join(posixpath.dirname(parent), SCRATCH_MARKER)):
        return True
    if not item.source_run or not await sftp.exists(posixpath.join(parent, SCRATCH_MARKER)):
        return False
    run, task = safe_component(item.source_run, "run name"), safe_component(item.task, "task name")
    record = posixpath.join(parent, INDEX, run, f"{task}-{item.source_attempt}")
    try:
        attrs = await sftp.lstat(record)
        if not attrs.permissions or not stat.S_ISREG(attrs.permissions):
            return False
        async with sftp.open(record, "rb") as f:
            name = (await f.read(512)).decode("utf-8", "replace").strip()
    except asyncssh.SFTPError:
        return False
    return bool(name) and name == posixpath.basename(root)


async def sftp_pull(item: StageInput, dest: Path, access: SshAccess | None) -> PullStats:
    """Copy what ``item`` references from the producer's task directory over SFTP into ``dest``.

    Raises:
        StagingError: no SSH access configured, the host key is unknown or changed,
            the path leaves the producer's directory, or a file does not match.
    """
    import asyncssh  # optional extra: only agents that stage over SSH need it

    if access is None:
        raise StagingError(
            f"input {item.ref}: the producer is reachable only over SSH and this agent has no ssh_key configured"
        )
    host, port, user = _target(item.url)
    stats = PullStats()
    began = time.monotonic()
    try:
        async with (
            asyncssh.connect(
                host, port, username=user, client_keys=[str(access.key)], known_hosts=str(access.known_hosts),
                config=None, agent_path=None,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):  # fmt: skip
            root = await sftp.realpath(item.source_dir)
            if not await _is_remote_task_dir(sftp, root, item):
                raise StagingError(
                    f"input {item.ref}: {root} on {host} is not a task directory of a dagon scratch root"
                )
            expected = await _manifest(sftp, root)
            for rel in await _covered(sftp, root, item.path):
                await _fetch(sftp, root, rel, dest / rel, expected.get(rel), stats)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise StagingError(
            f"input {item.ref}: the SSH host key of {host}:{port} is not in {access.known_hosts} ({exc.reason});"
            " verify it and add it (e.g. ssh-keyscan, compared with the host's fingerprint) — it is never auto-accepted"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise StagingError(f"input {item.ref}: SFTP from {host}:{port}: {exc}") from exc
    stats.seconds = time.monotonic() - began
    if not stats.files:
        raise StagingError(f"input {item.ref}: no such file in {item.task}'s output on {host}")
    return stats


async def _manifest(sftp: Any, root: str) -> dict[str, str]:
    try:
        async with sftp.open(posixpath.join(root, ".dagon", MANIFEST_FILE), "rb") as f:
            entries = json.loads(await f.read())
        return {str(e["path"]): str(e["sha256"]) for e in entries}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


async def _covered(sftp: Any, root: str, scope: str) -> list[str]:
    """Regular files under ``root`` that ``scope`` covers (no symlinks, not under .dagon)."""
    found: list[str] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        for entry in await sftp.readdir(posixpath.join(root, rel_dir) if rel_dir else root):
            name = entry.filename
            if name in (".", "..") or (not rel_dir and name == ".dagon"):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            kind = entry.attrs.type
            if kind == 2:  # directory (FILEXFER_TYPE_DIRECTORY)
                pending.append(rel)
            elif kind == 1 and covers(scope, rel):  # regular file; symlinks (3) are never followed
                found.append(rel)
    return sorted(found)


def _write(out: Any, digest: Any, chunk: bytes) -> None:
    digest.update(chunk)
    out.write(chunk)


async def _fetch(sftp: Any, root: str, rel: str, target: Path, sha: str | None, stats: PullStats) -> None:
    remote = posixpath.join(root, rel)
    if not (await sftp.realpath(remote)).startswith(root + "/"):
        raise StagingError(f"{rel} leads outside the producer's directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    async with sftp.open(remote, "rb") as source:
        out = await asyncio.to_thread(part.open, "wb")
        try:
            while chunk := await source.read(_BLOCK):
                await asyncio.to_thread(_write, out, digest, chunk)
                stats.bytes += len(chunk)
        finally:
            out.close()
    if sha is not None and digest.hexdigest() != sha:
        part.unlink(missing_ok=True)
        raise StagingError(f"{rel}: sha256 differs from the producer's manifest (corrupted in transit or changed)")
    part.replace(target)
    stats.files += 1
