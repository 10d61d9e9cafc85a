"""HTTP tasks against a real aiohttp server: staging, secrets, statuses, retries, timeout, cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _broker import free_port
from aiohttp import web

import dagon
from dagon.agent.runtimes import Execution
from dagon.agent.runtimes._http import HttpRuntime
from dagon.core import RunState, ValidationError
from dagon.protocol import ResultStatus, RunId, TaskAssignment, TaskName
from dagon.protocol.transport import MemoryHub

TOKEN = "tok-3f9a-very-secret"


@dataclass
class Server:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0  # answer 503 this many times first
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    port = free_port()
    state = Server(f"http://127.0.0.1:{port}")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        state.seen.append({"method": request.method, "path": request.path_qs, "headers": dict(request.headers),
                           "body": body})  # fmt: skip
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if state.failures > 0:
            state.failures -= 1
            return web.Response(status=503, text="busy")
        return web.json_response({"got": json.loads(body) if body else None}, status=201)

    async def status(request: web.Request) -> web.Response:
        state.seen.append({"path": request.path_qs})
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def slow(request: web.Request) -> web.Response:
        await state.release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


def execution(tmp: Path, url: str, *, timeout: float | None = None, **options: Any) -> Execution:
    workdir = tmp / "scratch" / "run" / "h-1"
    (workdir / ".dagon").mkdir(parents=True)
    a = TaskAssignment(RunId("run"), "wf", TaskName("h"), 1, "http", url, timeout=timeout,
                       runtime_options=dict(options))  # fmt: skip
    return Execution(a, url, workdir, {}, workdir / ".dagon" / "stdout", workdir / ".dagon" / "stderr",
                     resolve=lambda text: text.replace("secret://TOKEN", TOKEN))  # fmt: skip


async def test_a_workflow_posts_a_staged_file_with_a_secret_header(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration._stack import memory_stack

    monkeypatch.setenv("DAGON_SECRET_TOKEN", TOKEN)
    wf = dagon.Workflow("api")
    wf.shell("make", """echo '{"sample": 7}' > body.json""")
    wf.http("send", f"{server.url}/echo", method="POST", body="workflow:///make/body.json",
            headers={"Authorization": "Bearer secret://TOKEN", "Content-Type": "application/json"},
            expect=201, output="answer.json")  # fmt: skip
    wf.shell("read", "cat workflow:///send/answer.json > copy.json")
    async with memory_stack(MemoryHub(), tmp_path, runtimes=[HttpRuntime()]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    assert result.state is RunState.SUCCEEDED, result.cause
    assert server.seen[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(server.seen[0]["body"]) == {"sample": 7}
    copy = Path(result["read"].workdir) / "copy.json"
    assert json.loads(copy.read_text()) == {"got": {"sample": 7}}
    send = Path(result["send"].workdir)
    assert "answer.json" in [o.path for o in result["send"].outputs]
    meta = send / ".dagon"
    for path in meta.rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), path
    assert "HTTP 201" in (meta / "stdout").read_text()
    assert json.loads((meta / "response.json").read_text())["status"] == 201
    assert wf["send"].runtime_options["headers"]["Authorization"] == "Bearer secret://TOKEN"


async def test_json_body_and_retries_after_5xx(server: Server, tmp_path: Path) -> None:
    server.failures = 2
    http = HttpRuntime()
    ex = execution(tmp_path, f"{server.url}/echo", method="POST", json={"n": [1, 2]}, backoff=0.01, retries=3,
                   headers={"Authorization": "Bearer secret://TOKEN"})  # fmt: skip
    outcome = await http.run(ex)
    await http.aclose()
    assert outcome.status is ResultStatus.SUCCEEDED, outcome
    assert len(server.seen) == 3
    assert json.loads((ex.workdir / "response").read_text()) == {"got": {"n": [1, 2]}}
    assert "after 3 tries" in ex.stdout.read_text()


async def test_persistent_5xx_fails_after_the_retries(server: Server, tmp_path: Path) -> None:
    http = HttpRuntime()
    outcome = await http.run(execution(tmp_path, f"{server.url}/status/500", retries=1, backoff=0.01))
    await http.aclose()
    assert outcome.status is ResultStatus.FAILED
    assert "HTTP 500" in outcome.error and "after 2 tries" in outcome.error
    assert len(server.seen) == 2


async def test_an_unexpected_status_fails_at_once(server: Server, tmp_path: Path) -> None:
    http = HttpRuntime()
    outcome = await http.run(execution(tmp_path, f"{server.url}/status/404", backoff=0.01))
    await http.aclose()
    assert outcome.status is ResultStatus.FAILED and outcome.exit_code == 404
    assert "expected a 2xx status" in outcome.error
    assert len(server.seen) == 1


async def test_an_expected_error_status_succeeds(server: Server, tmp_path: Path) -> None:
    http = HttpRuntime()
    outcome = await http.run(execution(tmp_path, f"{server.url}/status/503", expect=[503], backoff=0.01))
    await http.aclose()
    assert outcome.status is ResultStatus.SUCCEEDED
    assert len(server.seen) == 1


async def test_connection_errors_are_retried_then_fail(tmp_path: Path) -> None:
    http = HttpRuntime()
    outcome = await http.run(execution(tmp_path, f"http://127.0.0.1:{free_port()}/x", retries=2, backoff=0.01))
    await http.aclose()
    assert outcome.status is ResultStatus.FAILED
    assert "connection failed" in outcome.error and "after 3 tries" in outcome.error


async def test_timeout_and_cancellation(server: Server, tmp_path: Path) -> None:
    http = HttpRuntime()
    outcome = await http.run(execution(tmp_path, f"{server.url}/slow", timeout=0.5))
    assert outcome.status is ResultStatus.TIMEOUT
    task = asyncio.create_task(http.run(execution(tmp_path / "again", f"{server.url}/slow")))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await http.aclose()


async def test_a_secret_in_the_url_never_shows(tmp_path: Path) -> None:
    http = HttpRuntime()
    port = free_port()
    outcome = await http.run(execution(tmp_path, f"http://127.0.0.1:{port}/?key=secret://TOKEN", retries=0))
    await http.aclose()
    assert outcome.status is ResultStatus.FAILED
    assert TOKEN not in outcome.error and "secret://TOKEN" in outcome.error
    assert TOKEN not in (tmp_path / "scratch" / "run" / "h-1" / ".dagon" / "stdout").read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x/y"}, "http:// or https://"),
        ({"method": "BREW"}, "method"),
        ({"expect": [99]}, "expect"),
        ({"headers": {"X-A": "one\ntwo"}}, "one line"),
        ({"body": "workflow:///A/x workflow:///B/y"}, "single workflow"),
        ({"body": object()}, "body"),
        ({"output": "../up"}, "output"),
        ({"retries": -1}, "retries"),
    ],
)
def test_bad_http_tasks_are_refused_when_built(kwargs: dict[str, Any], message: str) -> None:
    wf = dagon.Workflow("w")
    args = {"url": "http://127.0.0.1:1/x", **kwargs}
    with pytest.raises(ValidationError, match=message):
        wf.http("h", args.pop("url"), **args)
