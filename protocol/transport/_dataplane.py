"""The data plane: an HTTP file server scoped by grants, and the client that pulls from it.

Bulk data never travels over MQTT. An agent serves the task directories of its
scratch root; the coordinator's relay serves (and accepts uploads into) its
relay directory. Both are :class:`DataServer`: every request carries a grant
(``Authorization: Bearer``) naming one attempt's directory and the path it
covers; anything outside that directory, under ``.dagon/``, or reached through a
symlink is refused — except the attempt's captured ``stdout``/``stderr`` under a grant
with op ``logs`` naming that stream (``GET /v1/logs/{stream}``, for ``dagon logs``).
Files are streamed (``sendfile``), never held in memory, and HTTP ``Range`` requests
let an interrupted pull resume.

:func:`pull` lists the files a grant covers (with the producer's sha256), then
downloads each one to ``NAME.part`` — resuming a partial file with ``Range`` —,
hashes while writing, and renames it into place only when the hash matches; a
mismatch (corruption in transit) or a dropped connection is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from dagon.protocol._errors import DagonError, ProtocolError, TransportError
from dagon.protocol._grants import Grant, covers
from dagon.protocol.transport._datatypes import MANIFEST_FILE, PullStats, ServerStats, server_url

__all__ = [
    "LOG_STREAMS",
    "MANIFEST_FILE",
    "Authorize",
    "DataServer",
    "Locate",
    "PullStats",
    "covered_files",
    "pull",
    "push",
]

log = logging.getLogger(__name__)

_CHUNK: Final = 1 << 20
_BATCH: Final = 8 << 20  # bytes handed to the writer thread at once
_MAX_LISTED: Final = 10_000
LOG_STREAMS: Final = ("stdout", "stderr")  # what a ``logs`` grant may name (files under .dagon/)

Authorize = Callable[[str], Grant]  # bearer token -> grant, or raise ProtocolError
Locate = Callable[[Grant], Path]  # grant -> the attempt's directory


def _relative(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or path.startswith("/") or ".." in parts or parts[0] == ".dagon":
        raise web.HTTPForbidden(text=f"path {path!r} is not a relative path inside the task's directory")
    return "/".join(parts)


def _inside(root: Path, rel: str) -> Path:
    full = root / rel
    resolved = full.resolve()
    if not resolved.is_relative_to(root.resolve()) or full.is_symlink():
        raise web.HTTPForbidden(text=f"{rel!r} leads outside the task's directory")
    return full


def covered_files(root: Path, scope: str) -> Iterator[str]:
    """Relative paths of the regular files under ``root`` that ``scope`` covers (no symlinks, no .dagon)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        dirnames[:] = sorted(
            d for d in dirnames if not (here / d).is_symlink() and not (rel_dir == "." and d == ".dagon")
        )
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if covers(scope, rel) and not (here / name).is_symlink():
                yield rel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listing(root: Path, scope: str) -> list[dict[str, Any]]:
    """Files the scope covers, with the producer's sha256 where its manifest has it (computed otherwise)."""
    known: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(OSError, ValueError):
        for entry in json.loads((root / ".dagon" / MANIFEST_FILE).read_text()):
            known[entry["path"]] = entry
    out = []
    for rel in covered_files(root, scope):
        path = root / rel
        size = path.stat().st_size
        entry = known.get(rel)
        sha = entry["sha256"] if entry is not None and entry.get("size") == size else _sha256(path)
        out.append({"path": rel, "size": size, "sha256": sha})
        if len(out) >= _MAX_LISTED:
            break
    return out


def _merge_manifest(meta: Path, entries: list[dict[str, Any]]) -> None:
    meta.mkdir(parents=True, exist_ok=True)
    merged: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(OSError, ValueError):
        merged = {e["path"]: e for e in json.loads((meta / MANIFEST_FILE).read_text())}
    merged.update({e["path"]: e for e in entries})
    tmp = meta / f"{MANIFEST_FILE}.{os.urandom(4).hex()}"
    tmp.write_text(json.dumps(list(merged.values())))
    tmp.replace(meta / MANIFEST_FILE)


class _BoundedFile(web.FileResponse):
    """A streamed file that holds one of the server's transfer slots while it is sent."""

    def __init__(self, path: Path, limit: asyncio.Semaphore) -> None:
        super().__init__(path, chunk_size=_CHUNK)
        self._slot = limit

    async def prepare(self, request: web.BaseRequest) -> Any:
        async with self._slot:  # prepare() sends the whole file (sendfile where possible)
            return await super().prepare(request)


class DataServer:
    """Serves attempt directories to holders of grants (an aiohttp app on its own runner).

    Args:
        authorize: turns a bearer token into a grant, raising ProtocolError if refused.
        locate: the directory a grant's attempt lives in.
        host, port: where to listen (loopback by default; port 0 picks a free one).
        uploads: be a relay: accept ``PUT`` of files (and, last, of the producer's
            manifest) under grants with op ``write``; a directory is listed only once
            its manifest has arrived, so consumers never see half an upload.
        max_transfers: concurrent requests served; more wait.
        tls: serve HTTPS with this server context (certificate and key loaded).
        sock: a listening socket to serve on (instead of binding ``host``/``port``).
    """

    def __init__(
        self,
        *,
        authorize: Authorize,
        locate: Locate,
        host: str = "127.0.0.1",
        port: int = 0,
        uploads: bool = False,
        max_transfers: int = 16,
        tls: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self._authorize = authorize
        self._locate = locate
        self._host = host
        self._port = port
        self._uploads = uploads
        self._tls = tls
        self._sock = sock
        self._manifest_lock = asyncio.Lock()
        self._limit = asyncio.Semaphore(max_transfers)
        self._runner: web.AppRunner | None = None
        self.stats = ServerStats()
        self.port = 0

    @property
    def url(self) -> str:
        return server_url(self._host, self.port, tls=self._tls is not None)

    async def __aenter__(self) -> DataServer:
        app = web.Application(client_max_size=1 << 20, middlewares=[self._count_refusals])
        app.router.add_get("/v1/list", self._list)
        app.router.add_get("/v1/files/{path:.+}", self._get)
        app.router.add_get("/v1/logs/{stream}", self._log)
        if self._uploads:
            app.router.add_put("/v1/files/{path:.+}", self._put)
            app.router.add_put("/v1/manifest", self._put_manifest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if self._sock is not None:
            site = web.SockSite(self._runner, self._sock, ssl_context=self._tls)
        else:
            site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._tls)
        await site.start()
        server = site._server  # the bound socket: port 0 becomes the real port
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("data server on %s", self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _count_refusals(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPUnauthorized, web.HTTPForbidden):
            self.stats.refused += 1
            raise

    def _grant(self, request: web.Request, op: str) -> Grant:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise web.HTTPUnauthorized(text="a data token is required (Authorization: Bearer TOKEN)")
        try:
            grant = self._authorize(header.removeprefix("Bearer ").strip())
        except ProtocolError as exc:
            log.warning("refused data request from %s: %s", request.remote, exc)
            raise web.HTTPForbidden(text=str(exc)) from None
        if grant.op != op:
            raise web.HTTPForbidden(text=f"this token allows {grant.op}, not {op}")
        return grant

    def _root(self, grant: Grant) -> Path:
        try:
            return self._locate(grant)
        except DagonError as exc:
            raise web.HTTPForbidden(text=str(exc)) from None

    async def _list(self, request: web.Request) -> web.Response:
        grant = self._grant(request, "read")
        root = self._root(grant)
        if not await asyncio.to_thread(root.is_dir):
            raise web.HTTPNotFound(text=f"no output of {grant.task} (attempt {grant.attempt}) here")
        if self._uploads and not await asyncio.to_thread((root / ".dagon" / MANIFEST_FILE).is_file):
            raise web.HTTPNotFound(text=f"the upload of {grant.task}'s output is not complete yet")
        async with self._limit:
            files = await asyncio.to_thread(_listing, root, grant.path)
        return web.json_response({"files": files})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request, "read")
        rel = _relative(request.match_info["path"])
        if not covers(grant.path, rel):
            raise web.HTTPForbidden(text=f"the token covers {grant.path!r}, not {rel!r}")
        path = await asyncio.to_thread(_inside, self._root(grant), rel)
        if not await asyncio.to_thread(path.is_file):
            raise web.HTTPNotFound(text=f"{rel} is not a file of {grant.task}'s output")
        self.stats.requests += 1
        if request.http_range.start is not None:
            self.stats.range_requests += 1
        return _BoundedFile(path, self._limit)

    async def _log(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request, "logs")
        stream = request.match_info["stream"]
        if stream not in LOG_STREAMS or grant.path != stream:
            raise web.HTTPForbidden(text=f"the token covers the {grant.path!r} log, not {stream!r}")
        path = await asyncio.to_thread(_inside, self._root(grant), f".dagon/{stream}")
        if not await asyncio.to_thread(path.is_file):
            raise web.HTTPNotFound(text=f"no {stream} of {grant.task} attempt {grant.attempt} here")
        self.stats.requests += 1
        return _BoundedFile(path, self._limit)

    async def _put(self, request: web.Request) -> web.Response:
        grant = self._grant(request, "write")
        rel = _relative(request.match_info["path"])
        if not covers(grant.path, rel):
            raise web.HTTPForbidden(text=f"the token covers {grant.path!r}, not {rel!r}")
        root = self._root(grant)
        target = root / rel
        # Parts live under .dagon/ (never listed or served) until complete, then move into place.
        part = root / ".dagon" / "parts" / (rel.replace("/", "%2F") + f".{os.urandom(4).hex()}")
        await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        async with self._limit:
            fd = await asyncio.to_thread(os.open, part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                async for chunk in request.content.iter_chunked(_CHUNK):
                    await asyncio.to_thread(os.write, fd, chunk)
                    self.stats.bytes_uploaded += len(chunk)
            finally:
                os.close(fd)
        await asyncio.to_thread(part.replace, target)
        return web.Response(status=201)

    async def _put_manifest(self, request: web.Request) -> web.Response:
        grant = self._grant(request, "write")
        try:
            entries = await request.json()
            paths = [str(e["path"]) for e in entries]
            _ = [(int(e["size"]), str(e["sha256"])) for e in entries]
        except (ValueError, TypeError, KeyError):
            raise web.HTTPBadRequest(text="expected a JSON list of {path, size, sha256}") from None
        for rel in paths:
            if not covers(grant.path, _relative(rel)):
                raise web.HTTPForbidden(text=f"the token covers {grant.path!r}, not {rel!r}")
        meta = self._root(grant) / ".dagon"
        async with self._manifest_lock:  # uploads of several scopes of one directory add up
            await asyncio.to_thread(_merge_manifest, meta, entries)
        return web.Response(status=201)


# -- client ------------------------------------------------------------------------


class _Corrupt(Exception):
    pass


def _hash_existing(part: Path) -> tuple[Any, int]:
    digest = hashlib.sha256()
    size = 0
    with contextlib.suppress(FileNotFoundError), part.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest, size


async def _download(
    session: ClientSession, url: str, token: str, entry: dict[str, Any], dest: Path, stats: PullStats
) -> None:
    part = dest.with_name(dest.name + ".part")
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    digest, have = await asyncio.to_thread(_hash_existing, part)
    size, expected = int(entry["size"]), str(entry["sha256"])
    if have > size:
        await asyncio.to_thread(part.unlink)
        digest, have = hashlib.sha256(), 0
    headers = {"Authorization": f"Bearer {token}"}
    if 0 < have < size:
        headers["Range"] = f"bytes={have}-"
        stats.resumed += 1
    if have < size:
        async with session.get(f"{url}/v1/files/{entry['path']}", headers=headers) as response:
            if response.status not in (200, 206):
                raise TransportError(f"{url} answered {response.status} for {entry['path']}: {await response.text()}")
            if response.status == 200 and have:  # the server ignored the range: start over
                digest, have = hashlib.sha256(), 0
            mode = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if have else os.O_TRUNC)
            fd = await asyncio.to_thread(os.open, part, mode, 0o644)
            buffered: list[bytes] = []
            pending = 0
            # Double buffering: one batch is hashed and written in a thread while the
            # next arrives; batches are written strictly in order (the hash needs it).
            writing: asyncio.Future[None] | None = None
            try:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    buffered.append(chunk)
                    pending += len(chunk)
                    if pending >= _BATCH:
                        if writing is not None:
                            await writing
                        writing = asyncio.ensure_future(asyncio.to_thread(_write_all, fd, digest, buffered))
                        stats.bytes += pending
                        buffered, pending = [], 0
            finally:
                try:
                    if writing is not None:
                        await _settle(writing)
                    # Keep what arrived before a drop: the next attempt resumes after it.
                    if buffered:
                        await asyncio.to_thread(_write_all, fd, digest, buffered)
                        stats.bytes += pending
                finally:
                    os.close(fd)
    if digest.hexdigest() != expected:
        await asyncio.to_thread(part.unlink, missing_ok=True)
        raise _Corrupt(
            f"{entry['path']}: sha256 {digest.hexdigest()[:12]}… differs from the producer's {expected[:12]}…"
        )
    await asyncio.to_thread(part.replace, dest)
    stats.files += 1


async def _settle(fut: asyncio.Future[None]) -> None:
    """Wait for ``fut`` even through cancellation (a thread must not outlive its descriptor)."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(fut)
    fut.result()


def _write_all(fd: int, digest: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


async def pull(
    url: str,
    token: str,
    dest: Path,
    *,
    retries: int = 3,
    concurrency: int = 4,
    on_progress: Callable[[PullStats], Awaitable[None] | None] | None = None,
    stall_after: float = 30.0,
    wait_for_upload: float = 0.0,
    stats: PullStats | None = None,
    tls: ssl.SSLContext | None = None,
) -> PullStats:
    """Download every file ``token`` covers from the data server at ``url`` into ``dest``.

    ``stall_after`` bounds connecting and each wait for data (not the whole transfer).
    ``wait_for_upload`` (seconds) keeps asking a relay whose upload is not complete yet.
    ``stats`` (optional) is updated while the pull runs, for progress reports.
    ``tls`` verifies ``https://`` servers (default: the system's CAs).

    Raises:
        TransportError: the server refused, or a file still failed after ``retries``
            attempts (corrupt or unreachable); the message says which file and why.
    """
    stats = stats if stats is not None else PullStats()
    started = time.monotonic()
    limit = asyncio.Semaphore(concurrency)
    client_timeout = ClientTimeout(total=None, sock_connect=stall_after, sock_read=stall_after)
    try:
        async with ClientSession(timeout=client_timeout, connector=_connector(tls)) as session:
            files = await _list_files(session, url, token, wait=wait_for_upload)
            stats.total += sum(int(entry["size"]) for entry in files)

            async def one(entry: dict[str, Any]) -> None:
                async with limit:
                    target = dest / entry["path"]
                    for attempt in range(retries + 1):
                        try:
                            await _download(session, url, token, entry, target, stats)
                            break
                        except (_Corrupt, ClientError, TimeoutError, ConnectionError) as exc:
                            if attempt == retries:
                                raise TransportError(f"pulling {entry['path']} from {url} failed: {exc}") from exc
                            stats.retries += 1
                            log.warning("pulling %s from %s: %s; retrying", entry["path"], url, exc)
                            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                    if on_progress is not None:
                        maybe = on_progress(stats)
                        if maybe is not None:
                            await maybe

            async with asyncio.TaskGroup() as group:
                for entry in files:
                    group.create_task(one(entry))
    except* TransportError as group:
        first = group.exceptions[0]
        raise first from first.__cause__  # the failed transfer's own cause, not the group around it
    except* (ClientError, OSError) as group:
        raise TransportError(f"data server {url}: {group.exceptions[0]}") from group.exceptions[0]
    stats.seconds = time.monotonic() - started
    return stats


async def _list_files(session: ClientSession, url: str, token: str, *, wait: float = 0.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        async with session.get(f"{url}/v1/list", headers={"Authorization": f"Bearer {token}"}) as response:
            if response.status == 200:
                doc = await response.json()
                break
            text = await response.text()
            if response.status != 404 or time.monotonic() + delay > deadline:
                waited = f" after waiting {wait:.0f} s for the upload" if wait and response.status == 404 else ""
                raise TransportError(f"{url} refused the listing ({response.status}){waited}: {text}")
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 2)
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list) or not files:
        raise TransportError(f"{url}: nothing to pull for this input")
    for entry in files:
        if not isinstance(entry, dict) or {"path", "size", "sha256"} - set(entry):
            raise TransportError(f"{url}: malformed file listing")
        _check_listed(str(entry["path"]))
    return files


def _check_listed(path: str) -> None:
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or not path or parts[0] == ".dagon":
        raise TransportError(f"data server listed an unsafe path {path!r}")


def _connector(tls: ssl.SSLContext | None) -> TCPConnector:
    return TCPConnector(ssl=tls if tls is not None else True)


async def push(
    url: str, token: str, root: Path, scope: str, *, stall_after: float = 30.0, tls: ssl.SSLContext | None = None
) -> int:
    """Upload the files of ``root`` that ``scope`` covers to the relay at ``url``, then their
    manifest (which completes the upload). Returns the bytes sent.

    Raises:
        TransportError: the relay refused or could not be reached.
    """
    files = await asyncio.to_thread(_listing, root, scope)
    if not files:
        raise TransportError(f"nothing under {root} matches {scope!r} to upload")
    headers = {"Authorization": f"Bearer {token}"}
    sent = 0
    timeout = ClientTimeout(total=None, sock_connect=stall_after, sock_read=stall_after)
    try:
        async with ClientSession(timeout=timeout, connector=_connector(tls)) as session:
            for entry in files:
                with (root / entry["path"]).open("rb") as data:
                    async with session.put(f"{url}/v1/files/{entry['path']}", data=data, headers=headers) as r:
                        if r.status != 201:
                            raise TransportError(f"relay {url} refused {entry['path']} ({r.status}): {await r.text()}")
                sent += int(entry["size"])
            async with session.put(f"{url}/v1/manifest", json=files, headers=headers) as r:
                if r.status != 201:
                    raise TransportError(f"relay {url} refused the manifest ({r.status}): {await r.text()}")
    except (ClientError, OSError) as exc:
        raise TransportError(f"relay {url}: {exc}") from exc
    return sent
