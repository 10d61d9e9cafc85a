"""The dashboard's HTTP side with a real client: the token on every route, control, the
token file, and what the JSON documents hold (and do not hold: secret values)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import aiohttp
import pytest

import dagon
from dagon._ui import Dashboard, load_or_create_token
from dagon._ui._token import cookie_value
from dagon.protocol import ConfigError
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack, taskflow

RUN = "taskflow-20260101-000000-abcdef"
ROUTES = [
    ("GET", "/"),
    ("GET", "/agents"),
    ("GET", f"/runs/{RUN}"),
    ("GET", f"/runs/{RUN}/tasks/A"),
    ("GET", "/static/app.js"),
    ("GET", "/static/app.css"),
    ("GET", "/static/nope.js"),
    ("GET", "/nowhere"),
    ("GET", "/api/info"),
    ("GET", "/api/runs"),
    ("GET", f"/api/runs/{RUN}"),
    ("GET", f"/api/runs/{RUN}/tasks/A"),
    ("GET", f"/api/runs/{RUN}/tasks/A/log/stdout"),
    ("GET", "/api/agents"),
    ("GET", "/api/stream"),
    ("GET", "/api/stream?page=agents"),
    ("GET", f"/api/stream?page=run&run={RUN}"),
    ("POST", f"/api/runs/{RUN}/cancel"),
    ("POST", f"/api/runs/{RUN}/resume"),
]


def test_token_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = load_or_create_token(home)
    path = home / "ui-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32
    assert load_or_create_token(home) == token  # kept across restarts
    assert cookie_value(token) != token


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    load_or_create_token(tmp_path)
    os.chmod(tmp_path / "ui-token", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_token(tmp_path)
    os.chmod(tmp_path / "ui-token", 0o600)
    (tmp_path / "ui-token").write_text("short\n")
    with pytest.raises(ConfigError, match="remove the file"):
        load_or_create_token(tmp_path)


async def test_every_route_answers_401_without_the_token(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        token = load_or_create_token(tmp_path / "home")
        async with Dashboard(coordinator, token=token, allow_control=True) as ui, aiohttp.ClientSession() as http:
            base = ui.url.rstrip("/")
            forged = {"Cookie": f"dagon_ui={cookie_value('x' * 43)}"}
            for method, path in ROUTES:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}, forged):
                    async with http.request(method, base + path, headers=headers, allow_redirects=False) as r:
                        assert r.status == 401, (method, path, headers, r.status)
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
                        assert token not in await r.text()
                sep = "&" if "?" in path else "?"
                async with http.request(method, f"{base}{path}{sep}token=wrong", allow_redirects=False) as r:
                    assert r.status == 401, (method, path)
            # The event stream is refused before anything streams.
            async with http.get(f"{base}/api/stream?page=runs") as r:
                assert r.status == 401 and r.content_type == "text/plain"
            # With the token: the API answers, with the security headers.
            async with http.get(f"{base}/api/runs", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_token_in_the_url_once_then_a_cookie(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        token = load_or_create_token(tmp_path / "home")
        jar = aiohttp.CookieJar(unsafe=True)  # aiohttp keeps no cookies of IP-address hosts unless told
        async with Dashboard(coordinator, token=token) as ui, aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(f"{ui.url}agents?token={token}&x=1", allow_redirects=False) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/agents?x=1"  # the token leaves the address bar
                cookie = r.cookies["dagon_ui"]
                assert cookie.value != token
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
            async with http.get(f"{ui.url}api/info") as r:  # the session keeps the cookie
                assert r.status == 200
                assert (await r.json())["control"] is False


async def test_read_only_unless_control_is_allowed(hub: MemoryHub, tmp_path: Path) -> None:
    wf = dagon.Workflow("long")
    wf.shell("wait", "sleep 30")
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        token = load_or_create_token(tmp_path / "home")
        auth = {"Authorization": f"Bearer {token}"}
        run = await coordinator.submit(wf)
        async with aiohttp.ClientSession() as http:
            control = {**auth, "X-Dagon-Control": "1"}
            async with (
                Dashboard(coordinator, token=token) as ui,
                http.post(f"{ui.url}api/runs/{run}/cancel", headers=control) as r,
            ):
                assert r.status == 403 and "--ui-allow-control" in await r.text()
            async with Dashboard(coordinator, token=token, allow_control=True) as ui:
                async with http.post(f"{ui.url}api/runs/{run}/cancel", headers=auth) as r:
                    assert r.status == 403 and "X-Dagon-Control" in await r.text()  # what a cross-site form sends
                cross = {**auth, "X-Dagon-Control": "1", "Origin": "http://evil.example"}
                async with http.post(f"{ui.url}api/runs/{run}/cancel", headers=cross) as r:
                    assert r.status == 403
                assert coordinator.engine.run(run).state is dagon.RunState.RUNNING
                async with http.post(f"{ui.url}api/runs/{run}/cancel", headers={**auth, "X-Dagon-Control": "1"}) as r:
                    assert r.status == 200
                async with asyncio.timeout(10):
                    result = await coordinator.wait(run)
                assert result.state is dagon.RunState.CANCELLED
                assert "dashboard" in result.cause or "dashboard" in result["wait"].cause


async def test_documents_show_env_names_never_values(hub: MemoryHub, tmp_path: Path) -> None:
    wf = dagon.Workflow("secretive")
    wf.shell("use", 'test -n "$API_KEY" && echo secret://DB_PASSWORD', env={"API_KEY": "hunter2-value"})
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        token = load_or_create_token(tmp_path / "home")
        run = await coordinator.submit(wf)
        await coordinator.wait(run)
        async with Dashboard(coordinator, token=token) as ui, aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {token}"}
            bodies = []
            for path in (f"api/runs/{run}", f"api/runs/{run}/tasks/use", "api/runs", "api/agents"):
                async with http.get(ui.url + path, headers=auth) as r:
                    assert r.status == 200, path
                    bodies.append(await r.text())
            detail = await (await http.get(f"{ui.url}api/runs/{run}/tasks/use", headers=auth)).json()
        assert detail["env_keys"] == ["API_KEY"]
        assert all("hunter2-value" not in body and token not in body for body in bodies)


async def test_a_finished_run_is_read_from_the_store_by_a_new_coordinator(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        run = await coordinator.submit(taskflow(extra=2))
        await coordinator.wait(run)
    token = load_or_create_token(tmp_path / "home")
    async with memory_stack(MemoryHub(), tmp_path) as (fresh, _):
        assert run not in fresh.engine.runs
        async with Dashboard(fresh, token=token) as ui, aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {token}"}
            runs = await (await http.get(f"{ui.url}api/runs?state=succeeded", headers=auth)).json()
            assert [r["id"] for r in runs["runs"]] == [run]
            assert runs["runs"][0]["counts"] == {"succeeded": 7}
            snap = await (await http.get(f"{ui.url}api/runs/{run}", headers=auth)).json()
            assert sorted(snap["tasks"]["names"]) == sorted(taskflow(extra=2).tasks)
            assert len(snap["bars"]) == 7
            detail = await (await http.get(f"{ui.url}api/runs/{run}/tasks/E", headers=auth)).json()
            assert detail["exit_code"] == 0 and detail["deps"] == ["D"]
            async with http.get(f"{ui.url}api/runs/nope", headers=auth) as r:
                assert r.status == 404


async def test_command_line_flags_start_print_and_refuse(hub: MemoryHub, tmp_path: Path) -> None:
    import argparse
    import io
    import socket

    from dagon._ui import add_ui_arguments, serve_ui, ui_settings

    parser = argparse.ArgumentParser()
    add_ui_arguments(parser)
    home = tmp_path / "home"
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        out = io.StringIO()
        async with serve_ui(coordinator, ui_settings(parser.parse_args([])), home=home, out=out) as off:
            assert off is None and out.getvalue() == ""
        with pytest.raises(ConfigError, match="needs --ui-port"):
            ui_settings(parser.parse_args(["--ui-allow-control"]))
        async with serve_ui(coordinator, ui_settings(parser.parse_args(["--ui-port", "0"])), home=home, out=out) as ui:
            assert ui is not None and ui.port > 0
            printed = out.getvalue()
            assert f"http://127.0.0.1:{ui.port}/?token={load_or_create_token(home)}" in printed
            assert "read-only" in printed
            with socket.socket() as busy:
                busy.bind(("127.0.0.1", 0))
                busy.listen()
                taken = ["--ui-port", str(busy.getsockname()[1])]
                with pytest.raises(ConfigError, match="choose another --ui-port"):
                    async with serve_ui(coordinator, ui_settings(parser.parse_args(taken)), home=home, out=out):
                        pass
        with pytest.raises(ConfigError, match="not a TCP port"):
            ui_settings(parser.parse_args(["--ui-port", "70000"]))
        with pytest.raises(ConfigError, match="--ui-host needs --ui-port"):
            ui_settings(parser.parse_args(["--ui-host", "0.0.0.0"]))


def test_dagon_run_serves_the_dashboard_of_its_coordinator(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagon._runner import RunnerContext, runner_context
    from dagon._ui import UiSettings

    monkeypatch.setenv("DAGON_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGON_BROKER", raising=False)
    wf = dagon.Workflow("served")
    wf.shell("one", "true")
    token = runner_context.set(RunnerContext(progress=False, ui=UiSettings(port=0)))
    try:
        result = wf.run()
    finally:
        runner_context.reset(token)
    assert result is not None and result.ok
    err = capfd.readouterr().err
    assert "dashboard (read-only): http://127.0.0.1:" in err
    assert f"?token={load_or_create_token(tmp_path / 'home')}" in err
