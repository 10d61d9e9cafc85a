"""The dashboard in a real headless Chromium during a real run over Mosquitto with agent processes.

Debian's ``/usr/bin/chromium`` driven by Playwright for Python (never ``playwright install``:
the system browser is launched by path). ``.ci/setup`` installs both; a missing one fails
under CI and skips on a developer's machine. Screenshots go to ``build/artifacts/``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import missing, stop_process

import dagon
from dagon._report import attempts_from
from dagon._ui import Dashboard, load_or_create_token
from dagon.core import Retry

from ._stack import memory_stack, start_agent

pytestmark = [pytest.mark.mosquitto, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "artifacts"
WAIT_MS = 20_000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium (the system's), closed at the end of the test."""
    if not os.access(CHROMIUM, os.X_OK):
        missing("chromium not installed: run .ci/setup (apt-get install chromium chromium-driver)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("playwright not installed: run .ci/setup (pip install -e '.[test]')")
    async with async_playwright() as pw:
        chrome = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chrome
        finally:
            await chrome.close()


@pytest.fixture
def agents(mosquitto: Any, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {"DAGON_TELEMETRY_INTERVAL": "0.5", "DAGON_POWER_SOURCE": "model"}
    procs = [start_agent(mosquitto.url, tmp_path, f"edge{i}", slots=3, env=env) for i in range(2)]
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc)


def workflow(gate: Path, marker: Path) -> dagon.Workflow:
    """A diamond with a fan-out, one task held by a gate file and one failing its first attempt."""
    wf = dagon.Workflow("dash")
    wf.shell("fetch", "echo data > raw.txt")
    for i in range(4):
        wf.shell(f"part{i}", f"sleep 0.{i}; cat workflow:///fetch/raw.txt > p.txt", after=["fetch"])
    wf.shell("held", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo ok > held.txt", after=["fetch"])
    wf.shell(
        "flaky",
        f"if [ ! -e {marker} ]; then touch {marker}; echo 'first try fails' >&2; exit 3; fi; echo fine",
        after=["fetch"],
        retry=Retry(attempts=1, backoff=0.1, max_backoff=0.1),
    )
    wf.shell(
        "merge", "cat workflow:///part0/p.txt workflow:///held/held.txt > m.txt", after=[f"part{i}" for i in range(4)]
    )
    wf.shell("report", "cat workflow:///merge/m.txt", after=["merge", "flaky"])
    return wf


async def test_live_run_agents_and_log_pages_in_chromium(
    mosquitto: Any, agents: list[subprocess.Popen[bytes]], browser: Any, tmp_path: Path
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "flaky-marker"
    wf = workflow(gate, marker)
    names = list(wf.tasks)
    errors: list[str] = []
    async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
        coordinator = client.coordinator
        assert coordinator is not None
        async with asyncio.timeout(20):
            await coordinator.wait_for_agents(2)
        token = load_or_create_token(tmp_path / "client")
        async with Dashboard(coordinator, token=token) as ui:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

            # ?token= once: a cookie, and the token leaves the address bar.
            await page.goto(ui.login_url)
            assert page.url == ui.url
            run = await client.submit(wf)
            await page.wait_for_selector(f'#runs tr.run[data-run="{run.id}"]', timeout=WAIT_MS)

            # Opened mid-run: the current state at once, one DAG node per task.
            await page.goto(f"{ui.url}runs/{run.id}")
            await page.wait_for_function(
                "n => document.querySelectorAll('#dag-svg .node').length === n", arg=len(names), timeout=WAIT_MS
            )
            shown = await page.eval_on_selector_all("#dag-svg .node", "els => els.map(e => e.dataset.task)")
            assert sorted(shown) == sorted(names)
            await page.wait_for_selector('#dag-svg .node[data-task="held"].s-running', timeout=WAIT_MS)
            await page.evaluate("window.__sameDocument = true")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-run-live.png"), full_page=True)

            # A state change arrives without a reload.
            gate.touch()
            await page.wait_for_selector('#dag-svg .node[data-task="held"].s-succeeded', timeout=WAIT_MS)
            await page.wait_for_selector("#run-head .badge.s-succeeded", timeout=WAIT_MS)
            assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
            result = await run.wait()
            assert result.ok, result.cause

            # One Gantt bar per attempt: every task once, the flaky one twice.
            assert coordinator.store is not None
            stored = await asyncio.to_thread(_transitions, coordinator.store.path, run.id)
            expected = {(b.task, b.attempt) for b in attempts_from(stored, end=0.0)}
            assert {(n, 1) for n in names} | {("flaky", 2)} == expected
            await page.wait_for_function(
                "n => document.querySelectorAll('#gantt-svg rect.bar').length === n", arg=len(expected), timeout=WAIT_MS
            )
            bars = await page.eval_on_selector_all(
                "#gantt-svg rect.bar",
                "els => els.map(e => [e.dataset.task, Number(e.dataset.attempt), e.dataset.agent])",
            )
            assert {(t, a) for t, a, _ in bars} == expected
            assert {agent for _, _, agent in bars} <= {"edge0", "edge1"}

            # Task details: retries and their cause, the stderr tail.
            await page.click('#dag-svg .node[data-task="flaky"]')
            await page.wait_for_selector("#detail .retries", timeout=WAIT_MS)
            retries = await page.text_content("#detail .retries")
            assert retries is not None and "exit code 3" in retries
            await page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)

            # The task's log page.
            await page.goto(f"{ui.url}runs/{run.id}/tasks/flaky")
            await page.wait_for_selector("#history tbody tr", timeout=WAIT_MS)
            history = await page.text_content("#history")
            assert history is not None and "retry_wait" in history
            # Its whole output, fetched on demand: attempt 2's stdout, then its (empty) stderr.
            await page.click('#logs button[data-stream="stdout"]')
            await page.wait_for_selector('#log-text[data-stream="stdout"][data-state="full"]', timeout=WAIT_MS)
            assert await page.text_content("#log-text") == "fine\n"
            assert "stdout of attempt 2" in (await page.text_content("#log-note") or "")
            await page.click('#logs button[data-stream="stderr"]')
            await page.wait_for_selector('#log-text[data-stream="stderr"][data-state="full"]', timeout=WAIT_MS)
            assert "empty" in (await page.text_content("#log-note") or "")

            # Agents: online, slots, runtimes, and live telemetry charts.
            await page.goto(f"{ui.url}agents")
            await page.wait_for_function(
                "() => document.querySelectorAll('#agents .agent[data-online=true] .chart[data-metric=cpu] polyline')"
                ".length === 2",
                timeout=WAIT_MS,
            )
            power = await page.text_content('#agents .agent[data-agent="edge0"] .chart[data-metric=power] .value')
            assert power is not None and "W modelled" in power
            before = await page.get_attribute('.agent[data-agent="edge0"] .chart[data-metric=cpu] polyline', "points")
            await page.wait_for_function(
                "p => document.querySelector('.agent[data-agent=\"edge0\"] .chart[data-metric=cpu] polyline')"
                ".getAttribute('points') !== p",
                arg=before,
                timeout=WAIT_MS,
            )
            slots = await page.text_content('.agent[data-agent="edge0"] .slots')
            assert slots is not None and "of 3" in slots
            await page.click("#theme")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-agents.png"), full_page=True)
            # An agent that stops is shown offline without a reload.
            stop_process(agents[1])
            await page.wait_for_selector('.agent[data-agent="edge1"][data-online="false"]', timeout=WAIT_MS)
            assert await page.get_attribute('.agent[data-agent="edge0"]', "data-online") == "true"
            await page.close()
    assert errors == []


def _transitions(path: str, run: str) -> list[tuple[Any, ...]]:
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT task, old, new, attempt, agent, at FROM transitions WHERE run=? ORDER BY rowid", (run,)
        ).fetchall()
    finally:
        db.close()


async def test_a_10000_task_run_page_stays_small_and_live(hub: Any, browser: Any, tmp_path: Path) -> None:
    """The DAG collapses to one block per depth and the task list renders only what is in view."""
    wf = dagon.Workflow("wide")
    width, depth = 500, 20
    for i in range(width * depth):
        wf.python(f"t{i}", "dagon.agent.builtins:noop", after=[f"t{i - width}"] if i >= width else [])
    errors: list[str] = []
    async with memory_stack(hub, tmp_path, slots=64) as (coordinator, _):
        token = load_or_create_token(tmp_path / "home")
        async with Dashboard(coordinator, token=token) as ui:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(ui.login_url)
            run = await coordinator.submit(wf)
            await page.goto(f"{ui.url}runs/{run}")
            await page.wait_for_function(
                "n => document.querySelectorAll('#dag-svg .layer-node').length === n", arg=depth, timeout=WAIT_MS
            )
            assert await page.eval_on_selector_all("#dag-svg .node", "els => els.length") == 0
            # Live: the last depth's block reaches 500 succeeded without a reload.
            await page.evaluate("window.__sameDocument = true")
            await page.wait_for_function(
                f"() => document.querySelector('#dag-svg .layer-node[data-layer=\"{depth - 1}\"] text.sum')"
                f".textContent.includes('succ {width}')",
                timeout=120_000,
            )
            await page.wait_for_selector("#run-head .badge.s-succeeded", timeout=WAIT_MS)
            assert await page.evaluate("window.__sameDocument === true")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-10000-tasks.png"), full_page=True)
            rows = await page.eval_on_selector_all("#tasks .row", "els => els.length")
            assert 0 < rows < 100  # of 10,000 tasks
            assert await page.evaluate("document.querySelectorAll('*').length") < 3000
            # The list still finds any task, and a depth block filters it.
            await page.fill('input[type="search"]', "t9999")
            await page.wait_for_function("() => document.querySelectorAll('#tasks .row').length === 1")
            await page.fill('input[type="search"]', "")
            await page.click(f'#dag-svg .layer-node[data-layer="{depth - 1}"]')
            await page.wait_for_function(
                "() => [...document.querySelectorAll('#tasks .row')].every(r => r.textContent.endsWith('d19'))"
            )
            await page.close()
    assert errors == []


async def test_cancel_button_only_with_control(hub: Any, browser: Any, tmp_path: Path) -> None:
    wf = dagon.Workflow("stoppable")
    wf.shell("sleepy", "sleep 60")
    errors: list[str] = []
    async with memory_stack(hub, tmp_path) as (coordinator, _):
        token = load_or_create_token(tmp_path / "home")
        run = await coordinator.submit(wf)
        page = await browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        async with Dashboard(coordinator, token=token) as ui:
            await page.goto(ui.login_url)
            await page.goto(f"{ui.url}runs/{run}")
            await page.wait_for_selector('#dag-svg .node[data-task="sleepy"]', timeout=WAIT_MS)
            await page.wait_for_function("() => fetch('/api/info').then(r => r.ok)")
            assert await page.query_selector("#cancel") is None  # read-only
        async with Dashboard(coordinator, token=token, allow_control=True) as ui:
            await page.goto(ui.login_url)
            await page.goto(f"{ui.url}runs/{run}")
            await page.click("#cancel", timeout=WAIT_MS)
            await page.wait_for_selector("#run-head .badge.s-cancelled", timeout=WAIT_MS)
            await page.wait_for_selector("#resume", timeout=WAIT_MS)  # a cancelled run can be resumed
        await page.close()
    assert coordinator.engine.run(run).state is dagon.RunState.CANCELLED
    assert errors == []


async def test_fifty_agents_telemetry_live_on_one_page(hub: Any, browser: Any, tmp_path: Path) -> None:
    """50 real agents (in-process, every message through the real codec) sampling every second: every
    card shows its own live charts, and the page keeps redrawing them all without a reload."""
    fleet = 50
    errors: list[str] = []
    async with memory_stack(hub, tmp_path, agents=fleet, slots=1, telemetry=1.0) as (coordinator, _):
        token = load_or_create_token(tmp_path / "home")
        async with Dashboard(coordinator, token=token) as ui:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(ui.login_url)
            await page.goto(f"{ui.url}agents")
            await page.wait_for_function(
                "n => document.querySelectorAll('#agents .agent[data-online=true] .chart[data-metric=cpu] polyline')"
                ".length === n",
                arg=fleet,
                timeout=60_000,
            )
            assert await page.text_content("#agents-count") == f"{fleet} online, 0 offline"
            shown = await page.eval_on_selector_all("#agents .agent", "els => els.map(e => e.dataset.agent)")
            assert sorted(shown) == sorted(f"agent{i}" for i in range(fleet))
            before = await page.eval_on_selector_all(
                "#agents .agent .chart[data-metric=cpu] polyline", "els => els.map(e => e.getAttribute('points'))"
            )
            await page.evaluate("window.__sameDocument = true")
            # Every one of the 50 charts moves: samples keep arriving for every agent, none starves.
            await page.wait_for_function(
                """before => {
                    const now = [...document.querySelectorAll('#agents .agent .chart[data-metric=cpu] polyline')]
                        .map(e => e.getAttribute('points'));
                    return now.length === before.length && now.every((p, i) => p !== before[i]);
                }""",
                arg=before,
                timeout=60_000,
            )
            assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
            # Cards are replaced, not piled up: the document stays the size of 50 cards.
            assert await page.evaluate("document.querySelectorAll('#agents .agent').length") == fleet
            assert await page.evaluate("document.querySelectorAll('*').length") < 100 * fleet
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-50-agents.png"))
            await page.close()
    assert errors == []
