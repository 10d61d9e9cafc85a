"""The dashboard's log route: a task's whole stdout and stderr, read from its scratch directory on
this machine, or fetched from its agent's data server when the agent's files are not visible here
(an agent process in its own mount namespace, its scratch on a tmpfs only it sees: another machine's
file view, for real)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _broker import missing, stop_process

import dagon
from dagon._ui import Dashboard, load_or_create_token
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack, start_agent

LINES = 5000  # ~65 KB: far more than the 4 KiB stderr tail the coordinator keeps


def chatty() -> dagon.Workflow:
    wf = dagon.Workflow("chatty")
    wf.shell("talk", f"seq 1 {LINES} | sed 's/^/out line /'; seq 1 {LINES} | sed 's/^/err line /' >&2")
    return wf


def expected(stream: str) -> str:
    prefix = stream.removeprefix("std")  # out, err
    return "".join(f"{prefix} line {i}\n" for i in range(1, LINES + 1))


def check(text: str, stream: str) -> None:
    """The whole log, compared without pytest's diff of two 30 KB strings."""
    same = text == expected(stream)
    assert same, f"{stream}: {len(text)} chars, starts {text[:80]!r}, ends {text[-80:]!r}"


async def fetch(ui: Dashboard, token: str, path: str) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
        session.get(f"{ui.url}{path}") as resp,
    ):
        return resp.status, await resp.text(), resp.headers


async def test_whole_logs_from_the_scratch_and_clear_errors(hub: MemoryHub, tmp_path: Path) -> None:
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        token = load_or_create_token(tmp_path / "home")
        run = await coordinator.submit(chatty())
        assert (await coordinator.wait(run)).ok
        async with Dashboard(coordinator, token=token) as ui:
            for stream in ("stdout", "stderr"):
                status, text, headers = await fetch(ui, token, f"api/runs/{run}/tasks/talk/log/{stream}")
                assert status == 200, text
                check(text, stream)
                assert headers["X-Dagon-Log"] == "full" and headers["X-Dagon-Attempt"] == "1"
                assert headers["X-Dagon-Dropped"] == "0"
            status, text, _ = await fetch(ui, token, f"api/runs/{run}/tasks/tlak/log/stdout")
            assert status == 404 and "no task 'tlak'" in text and "talk" in text
            status, text, _ = await fetch(ui, token, f"api/runs/{run}/tasks/talk/log/stdout?attempt=3")
            assert status == 404 and "attempt 1 only, not 3" in text
            status, text, _ = await fetch(ui, token, f"api/runs/{run}/tasks/talk/log/stdout?attempt=x")
            assert status == 400 and "attempt must be a number" in text
            status, text, _ = await fetch(ui, token, f"api/runs/{run}/tasks/talk/log/environ")
            assert status == 404 and "stdout or stderr" in text


@pytest.mark.mosquitto
async def test_whole_logs_fetched_from_an_agent_on_another_file_system(mosquitto: Any, tmp_path: Path) -> None:
    unshare = shutil.which("unshare") or missing("unshare (util-linux) not installed")
    scratch = tmp_path / "far" / "scratch"
    # The agent mounts a tmpfs over its scratch in its own mount namespace: the coordinator's store
    # names a directory this process cannot see, as on another machine.
    private = f'mkdir -p {scratch} && mount -t tmpfs tmpfs {scratch} && exec "$@"'
    agent = start_agent(
        mosquitto.url, tmp_path, "far", args=["--scratch", str(scratch)],
        prefix=[unshare, "--mount", "--propagation", "private", "sh", "-c", private, "sh"],
    )  # fmt: skip
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
            coordinator = client.coordinator
            assert coordinator is not None
            async with asyncio.timeout(30):
                await coordinator.wait_for_agents(1)
            handle = await client.submit(chatty())
            result = await handle.wait()
            assert result.ok, result.cause
            workdir = Path(str(result["talk"].workdir or ""))
            assert workdir.is_relative_to(scratch) and not (workdir / ".dagon" / "stdout").exists()  # not from here
            token = load_or_create_token(tmp_path / "client")
            async with Dashboard(coordinator, token=token) as ui:
                for stream in ("stdout", "stderr"):
                    status, text, headers = await fetch(ui, token, f"api/runs/{handle.id}/tasks/talk/log/{stream}")
                    assert status == 200, text
                    check(text, stream)
                    assert headers["X-Dagon-Log"] == "full"
                stop_process(agent)  # gone: only the coordinator's stderr tail is left
                await asyncio.sleep(0.5)
                status, text, _ = await fetch(ui, token, f"api/runs/{handle.id}/tasks/talk/log/stdout")
                assert status == 404 and "keeps no copy of stdout" in text
                status, text, headers = await fetch(ui, token, f"api/runs/{handle.id}/tasks/talk/log/stderr")
                assert status == 200 and headers["X-Dagon-Log"] == "tail"
                assert expected("stderr").endswith(text) and 0 < len(text) <= 4096  # agent.runtimes STDERR_TAIL
    finally:
        stop_process(agent)
