"""The data plane over real HTTP on loopback: grants, scope, streaming, corruption and resumption."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientError, ClientSession, web

from dagon.protocol import (
    Grant,
    ProtocolError,
    Signer,
    TransportError,
    bind_grant,
    covers,
    mint_grant,
    raw_public_key,
    read_grant,
)
from dagon.protocol.transport import MANIFEST_FILE, DataServer, LazyDataServer, pull

COORDINATOR = Signer.generate()
KEYS = {COORDINATOR.key_id: COORDINATOR.public_key}


def grant(path: str, *, op: str = "read", ttl: float = 60, task: str = "A") -> str:
    return mint_grant(COORDINATOR, Grant("r1", task, 1, path, "agent-b", op, time.time() + ttl))


def producer(root: Path) -> Path:
    task = root / "r1" / "A-1"
    (task / "out" / "sub").mkdir(parents=True)
    (task / ".dagon").mkdir()
    files = {"out/a.txt": b"alpha\n", "out/b.txt": b"beta\n", "out/sub/c.bin": os.urandom(3 << 20), "top.txt": b"t"}
    for rel, data in files.items():
        (task / rel).write_bytes(data)
    (task / ".dagon" / "stdout").write_text("private")
    manifest = [{"path": k, "size": len(v), "sha256": hashlib.sha256(v).hexdigest()} for k, v in files.items()]
    (task / ".dagon" / MANIFEST_FILE).write_text(json.dumps(manifest))
    return task


@contextlib.asynccontextmanager
async def serving(root: Path) -> AsyncIterator[DataServer]:
    def locate(g: Grant) -> Path:
        return root / g.run / f"{g.task}-{g.attempt}"

    async with DataServer(authorize=lambda t: read_grant(t, KEYS), locate=locate) as server:
        yield server


def test_grants_verify_and_refuse() -> None:
    token = grant("out/*.txt")
    g = read_grant(token, KEYS)
    assert (g.run, g.task, g.attempt, g.path, g.op) == ("r1", "A", 1, "out/*.txt", "read")
    kid, body, sig = token.split(".")
    changed = "B" if body[10] == "A" else "A"  # a character in the middle: every bit of it counts
    with pytest.raises(ProtocolError) as info:
        read_grant(f"{kid}.{body[:10]}{changed}{body[11:]}.{sig}", KEYS)
    assert info.value.reason in {"forged", "malformed"}
    with pytest.raises(ProtocolError, match="expired"):
        read_grant(grant("x", ttl=-1), KEYS)
    with pytest.raises(ProtocolError, match="unknown key"):
        read_grant(mint_grant(Signer.generate(), Grant("r1", "A", 1, "x", "b", "read", time.time() + 9)), KEYS)
    for bad in ("", "a.b", "a.b.c.d", "x.!!!.y"):
        with pytest.raises(ProtocolError):
            read_grant(bad, KEYS)


def test_a_grant_names_the_attempt_it_was_minted_for() -> None:
    consumer = ("r1", "B", 3)
    g = read_grant(
        mint_grant(COORDINATOR, Grant("r1", "A", 1, "x", "b", "read", time.time() + 9, consumer=consumer)), KEYS
    )
    assert g.consumer == consumer
    assert read_grant(grant("x"), KEYS).consumer is None  # a client's fetch, an upload: bound to no attempt


@pytest.mark.parametrize(
    ("scope", "path", "ok"),
    [
        ("out/a.txt", "out/a.txt", True),
        ("out", "out/sub/c.bin", True),
        ("out/*.txt", "out/a.txt", True),
        ("out/*.txt", "out/sub/c.txt", False),
        ("out/*", "out/sub/c.bin", True),
        ("out/a.txt", "out/b.txt", False),
        ("out", "top.txt", False),
        ("out", "outside/x", False),
    ],
)
def test_scope(scope: str, path: str, ok: bool) -> None:
    assert covers(scope, path) is ok


async def test_pull_files_directories_and_globs(tmp_path: Path) -> None:
    source = producer(tmp_path / "scratch")
    async with serving(tmp_path / "scratch") as server:
        for n, (scope, expected) in enumerate(
            (
                ("out/a.txt", {"out/a.txt"}),
                ("out", {"out/a.txt", "out/b.txt", "out/sub/c.bin"}),
                ("out/*.txt", {"out/a.txt", "out/b.txt"}),
            )
        ):
            dest = tmp_path / "dest" / str(n)
            stats = await pull(server.url, grant(scope), dest)
            got = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
            assert got == expected
            for rel in expected:
                assert (dest / rel).read_bytes() == (source / rel).read_bytes()
            assert stats.files == len(expected)


async def test_tokens_paths_and_links_outside_the_scope_are_refused(tmp_path: Path) -> None:
    source = producer(tmp_path / "scratch")
    (tmp_path / "secret.txt").write_text("s3cret")
    (source / "out" / "link.txt").symlink_to(tmp_path / "secret.txt")
    async with serving(tmp_path / "scratch") as server, ClientSession() as http:

        async def status(path: str, token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            async with http.get(f"{server.url}/v1/files/{path}", headers=headers) as response:
                return response.status

        assert await status("out/a.txt", grant("out/a.txt")) == 200
        assert await status("out/a.txt", None) == 401
        assert await status("out/a.txt", grant("out/a.txt", ttl=-5)) == 403  # expired
        forged = Signer.generate()
        foreign = mint_grant(forged, Grant("r1", "A", 1, "out", "x", "read", time.time() + 60))
        assert await status("out/a.txt", foreign) == 403  # signed by an unknown key
        assert await status("out/b.txt", grant("out/a.txt")) == 403  # outside the token's scope
        assert await status("top.txt", grant("out")) == 403
        assert await status("out/link.txt", grant("out")) == 403  # a symlink out of the directory
        assert await status(".dagon/stdout", grant(".dagon")) == 403  # dagon's own files
        assert await status("out/%2E%2E/%2E%2E/%2E%2E/secret.txt", grant("out")) in (403, 404)
        assert await status("out/a.txt", grant("out/a.txt", op="write")) == 403  # wrong operation
        assert await status("out/a.txt", grant("out/a.txt", task="B")) == 404  # another task's directory
        listing = await pull(server.url, grant("out"), tmp_path / "d")
        assert listing.files == 3  # the symlink is neither listed nor served
    assert server.stats.refused >= 8


@contextlib.asynccontextmanager
async def faulty_proxy(upstream: str, *, corrupt_first: bool = False, cut_first_after: int = 0) -> AsyncIterator[str]:
    """A real HTTP proxy in front of the data server that damages the first file transfer."""
    damaged = {"done": False}

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Range")}
        async with ClientSession() as http, http.get(f"{upstream}{request.rel_url}", headers=headers) as up:
            response = web.StreamResponse(status=up.status)
            for key in ("Content-Length", "Content-Range", "Content-Type"):
                if key in up.headers:
                    response.headers[key] = up.headers[key]
            await response.prepare(request)
            first = "/v1/files/" in request.path and not damaged["done"]
            sent = 0
            async for chunk in up.content.iter_chunked(1 << 16):
                if first and corrupt_first and sent == 0:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                if first and cut_first_after and sent + len(chunk) > cut_first_after:
                    damaged["done"] = True
                    assert request.transport is not None
                    request.transport.close()  # the connection drops mid-file
                    return response
                await response.write(chunk)
                sent += len(chunk)
            if first:
                damaged["done"] = True
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_corrupted_transfer_is_detected_and_retried(tmp_path: Path) -> None:
    source = producer(tmp_path / "scratch")
    async with serving(tmp_path / "scratch") as server, faulty_proxy(server.url, corrupt_first=True) as proxy:
        stats = await pull(proxy, grant("out/sub/c.bin"), tmp_path / "dest")
    assert stats.retries == 1
    assert (tmp_path / "dest" / "out/sub/c.bin").read_bytes() == (source / "out/sub/c.bin").read_bytes()
    assert not list((tmp_path / "dest").rglob("*.part"))


async def test_an_interrupted_transfer_resumes_where_it_stopped(tmp_path: Path) -> None:
    source = producer(tmp_path / "scratch")
    async with serving(tmp_path / "scratch") as server, faulty_proxy(server.url, cut_first_after=1 << 20) as proxy:
        stats = await pull(proxy, grant("out/sub/c.bin"), tmp_path / "dest")
    assert stats.resumed == 1 and server.stats.range_requests == 1
    assert stats.bytes < 2 * (3 << 20)  # the first megabyte was not fetched twice
    assert (tmp_path / "dest" / "out/sub/c.bin").read_bytes() == (source / "out/sub/c.bin").read_bytes()


async def test_persistent_corruption_fails_with_the_file_named(tmp_path: Path) -> None:
    source = producer(tmp_path / "scratch")
    (source / "out" / "a.txt").write_bytes(b"ALPHA\n")  # same size, not what the manifest says
    async with serving(tmp_path / "scratch") as server:
        with pytest.raises(TransportError, match=r"out/a\.txt.*differs from the producer's") as info:
            await pull(server.url, grant("out/a.txt"), tmp_path / "dest", retries=1)
    assert info.value.__cause__ is not None  # the last attempt's own error, kept for whoever debugs it


async def test_an_unreachable_data_server_is_named_with_the_connection_error_as_cause(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(TransportError, match=rf"data server {url}") as info:
        await pull(url, grant("out/a.txt"), tmp_path / "dest")
    assert isinstance(info.value.__cause__, OSError | ClientError)


async def test_the_lazy_data_server_loads_on_the_first_connection_and_serves(tmp_path: Path) -> None:
    source = producer(tmp_path / "scratch")

    def locate(g: Grant) -> Path:
        return tmp_path / "scratch" / g.run / f"{g.task}-{g.attempt}"

    async with LazyDataServer(authorize=lambda t: read_grant(t, KEYS), locate=locate) as server:
        loaded_before = server.loaded
        assert server.url.startswith("http://127.0.0.1:") and not loaded_before
        stats = await pull(server.url, grant("out"), tmp_path / "dest")
        assert server.loaded and server.stats.requests == 3
        again = await pull(server.url, grant("top.txt"), tmp_path / "dest2")  # the same socket, now served
    assert stats.files == 3 and again.files == 1
    assert (tmp_path / "dest" / "out" / "sub" / "c.bin").read_bytes() == (source / "out" / "sub" / "c.bin").read_bytes()
    assert server.stats.requests == 4  # still readable after it closed


def test_an_idle_agent_does_not_load_the_http_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dagon.cli._agent, dagon.agent._agent;"
        "print(sorted(m for m in ('aiohttp', 'dagon.protocol.transport._dataplane') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_bound_grant_serves_only_its_holder() -> None:
    holder, thief = Signer.generate(), Signer.generate()
    bound = Grant("r1", "A", 1, "out", "agent-b", "read", time.time() + 60, raw_public_key(holder.public_key))
    token = mint_grant(COORDINATOR, bound)
    with pytest.raises(ProtocolError, match="bound to agent 'agent-b'") as info:
        read_grant(token, KEYS)  # as sniffed off the broker
    assert info.value.reason == "unbound"
    with pytest.raises(ProtocolError) as info:
        read_grant(bind_grant(token, thief), KEYS)
    assert info.value.reason == "forged"
    assert read_grant(bind_grant(token, holder), KEYS).holder == raw_public_key(holder.public_key)
