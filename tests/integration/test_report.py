"""``dagon report RUN``: the HTML report of real runs (a real coordinator and agents over the
in-memory transport, the real run store), parsed back with ``html.parser``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import dagon
from dagon._report import attempts_from
from dagon.core import RunState, RunStore, TaskState
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack, taskflow

DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]


class Page(HTMLParser):
    """What the test needs from the page: lanes, bars, table rows, anything external."""

    def __init__(self) -> None:
        super().__init__()
        self.lanes: dict[str, int] = {}
        self.bars: list[dict[str, str]] = []
        self.rows: dict[str, dict[str, str]] = {}  # task -> row attrs + energy cells
        self.totals: dict[str, dict[str, list[str]]] = {"runtime": {}, "agent": {}}
        self.external: list[str] = []
        self.tags: set[str] = set()
        self.ticks: list[str] = []  # the time axis' labels
        self.cells: dict[str, list[str]] = {}  # task -> its row's cell texts
        self._row: str | None = None
        self._total: tuple[str, str] | None = None
        self._cells: list[str] = []
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        for key in ("src", "href"):
            if key in a:
                self.external.append(f"{tag} {key}={a[key]}")
        if tag in ("script", "link", "iframe", "img", "object", "embed"):
            self.external.append(tag)
        if tag == "g" and a.get("class") == "lane":
            self.lanes[a["data-agent"]] = int(a["data-lane"])
        elif tag == "rect" and a.get("class") == "bar":
            self.bars.append(a)
        elif tag == "text" and a.get("class") == "tick":
            self.ticks.append("")
        elif tag == "tr" and a.get("class") == "task":
            self._row = a["data-task"]
            self.rows[self._row] = dict(a)
        elif tag == "tr" and a.get("class") == "total":
            key = "runtime" if "data-runtime" in a else "agent"
            self._total = (key, a[f"data-{key}"])
            self._cells = []
        elif tag == "td" and self._row is not None:
            if "data-joules" in a:
                self.rows[self._row]["joules"] = a["data-joules"]
            if "data-watts" in a:
                self.rows[self._row]["watts"] = a["data-watts"]
        if tag == "td":
            self._text = ""

    def handle_data(self, data: str) -> None:
        self._text += data
        if self.lasttag == "title" and self.bars:
            self.bars[-1]["title"] = self.bars[-1].get("title", "") + data
        elif self.lasttag == "text" and self.ticks and not self.rows:
            self.ticks[-1] += data
        if "url(" in data or "@import" in data:
            self.external.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._total is not None:
            self._cells.append(self._text)
        elif tag == "td" and self._row is not None:
            self.cells.setdefault(self._row, []).append(self._text)
        elif tag == "tr":
            if self._total is not None:
                self.totals[self._total[0]][self._total[1]] = self._cells
            self._row, self._total = None, None


def report(home: Path, run: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
    env["DAGON_HOME"] = str(home)
    return subprocess.run(
        [*DAGON, "report", run, "-o", str(out)], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def parse_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


async def run_workflows(tmp_path: Path, *workflows: dagon.Workflow) -> list[Any]:
    results = []
    async with memory_stack(MemoryHub(), tmp_path, agents=2, slots=2) as (coordinator, agents):
        for agent in agents:  # a first telemetry sample, so energy can be attributed
            assert agent.telemetry is not None
            async with asyncio.timeout(10):
                while agent.telemetry.samples < 1:
                    await asyncio.sleep(0.01)
        for wf in workflows:
            run = await coordinator.submit(wf)
            results.append(await coordinator.wait(run))
    return results


def stored_results(tmp_path: Path, run: str) -> dict[str, dict[str, Any]]:
    store = RunStore(tmp_path / "runs.sqlite")
    try:
        return {t.name: t.result or {} for t in store.tasks(run)}
    finally:
        store.close()


async def test_report_of_a_completed_run_has_one_bar_per_attempt_and_the_energy(tmp_path: Path) -> None:
    wf = taskflow(extra=4)
    wf.shell("pyish", f"{sys.executable} -c 'print(1)'", after=["E"])
    (result,) = await run_workflows(tmp_path, wf)
    assert result.state is RunState.SUCCEEDED
    out = report(tmp_path, result.run, tmp_path / "r.html")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "r.html")
    page = parse_page(tmp_path / "r.html")

    assert page.external == [] and "svg" in page.tags  # self-contained: inline SVG, nothing fetched
    agents = {t.agent for t in result.tasks.values()}
    assert set(page.lanes) == agents and sorted(page.lanes.values()) == list(range(len(agents)))
    assert len(page.bars) == len(wf) == len(result.tasks)
    for bar in page.bars:
        task = result[bar["data-task"]]
        assert bar["data-attempt"] == "1" and bar["data-state"] == "succeeded"
        assert bar["data-agent"] == task.agent and int(bar["data-lane"]) == page.lanes[task.agent]
        assert float(bar["width"]) >= 1.0

    docs = stored_results(tmp_path, result.run)
    assert set(page.rows) == set(result.tasks)
    for name, row in page.rows.items():
        assert row["data-state"] == "succeeded"
        energy = docs[name]["energy"]
        assert energy is not None and energy["joules"] > 0, name
        assert float(row["joules"]) == energy["joules"] and float(row["watts"]) == energy["watts"]
    per_agent = page.totals["agent"]
    assert set(per_agent) == agents
    for agent, cells in per_agent.items():
        mine = [docs[n] for n, t in result.tasks.items() if t.agent == agent]
        assert int(cells[1]) == len(mine)
        assert float(cells[3]) == pytest.approx(sum(d["energy"]["joules"] for d in mine), abs=1e-3)
    assert set(page.totals["runtime"]) == {"process"} and int(page.totals["runtime"]["process"][1]) == len(wf)
    # A bar's tooltip says the duration its task's row says; the axis never repeats a label.
    for bar in page.bars:
        duration = page.cells[bar["data-task"]][5]
        assert bar["title"].endswith(f"succeeded, {duration} s"), (bar["title"], duration)
    assert len(page.ticks) >= 3 and len(set(page.ticks)) == len(page.ticks), page.ticks
    assert {cells[9] for cells in page.cells.values()} == {"modelled"}  # the CPU model, said once


async def test_report_of_a_failed_run_with_a_retried_task(tmp_path: Path) -> None:
    marker = tmp_path / "flaky-failed-once"
    wf = dagon.Workflow("breaks")
    wf.shell("flaky", f"test -e {marker} || {{ touch {marker}; exit 1; }}", retry=dagon.Retry(attempts=1, backoff=0))
    wf.shell("bad", "echo broken >&2; exit 3")
    wf.shell("after_bad", "true", after=["bad"])
    wf.shell("ok", "true")
    (result,) = await run_workflows(tmp_path, wf)
    assert result.state is RunState.FAILED
    assert result["flaky"].attempt == 2 and result["flaky"].ok
    out = report(tmp_path, result.run, tmp_path / "failed.html")
    assert out.returncode == 0, out.stderr
    page = parse_page(tmp_path / "failed.html")

    bars = sorted((b["data-task"], int(b["data-attempt"]), b["data-state"]) for b in page.bars)
    assert bars == [("bad", 1, "failed"), ("flaky", 1, "retried"), ("flaky", 2, "succeeded"), ("ok", 1, "succeeded")]
    for bar in page.bars:
        assert int(bar["data-lane"]) == page.lanes[bar["data-agent"]]
    assert page.rows["after_bad"]["data-state"] == TaskState.UPSTREAM_FAILED.value
    assert page.rows["bad"]["data-state"] == "failed"
    text = (tmp_path / "failed.html").read_text()
    assert "state <b class='state-failed' id='run-state'>failed</b>" in text


def test_report_of_an_unknown_run_or_missing_store_says_what_to_do(tmp_path: Path) -> None:
    out = report(tmp_path, "nope", tmp_path / "x.html")
    assert out.returncode == 2 and "no run store" in out.stderr and "DAGON_HOME" in out.stderr
    RunStore(tmp_path / "runs.sqlite").close()
    out = report(tmp_path, "nope", tmp_path / "x.html")
    assert out.returncode == 2 and "no run 'nope'" in out.stderr and "dagon runs" in out.stderr
    assert not (tmp_path / "x.html").exists()


def test_attempts_from_transitions() -> None:
    rows = [
        ("a", "pending", "dispatched", 1, "n1", 1.0),
        ("a", "dispatched", "running", 1, "n1", 1.5),
        ("a", "running", "retry_wait", 1, "n1", 2.0),
        ("a", "retry_wait", "dispatched", 2, "n2", 2.5),
        ("a", "dispatched", "running", 2, "n2", 3.0),
        ("b", "dispatched", "running", 1, "n1", 3.0),
        ("a", "running", "succeeded", 2, "n2", 4.0),
        # started and finished reported together: from the dispatch to the outcome
        ("c", "ready", "dispatched", 1, "n2", 5.0),
        ("c", "dispatched", "failed", 1, "n2", 5.5),
        # lost before it started: no bar
        ("d", "ready", "dispatched", 1, "n1", 5.0),
        ("d", "dispatched", "ready", 1, "n1", 6.0),
    ]
    bars = attempts_from(rows, end=9.0, running=True)
    assert [(b.task, b.attempt, b.agent, b.start, b.end, b.state) for b in bars] == [
        ("a", 1, "n1", 1.5, 2.0, "retried"),
        ("a", 2, "n2", 3.0, 4.0, "succeeded"),
        ("b", 1, "n1", 3.0, 9.0, "running"),
        ("c", 1, "n2", 5.0, 5.5, "failed"),
    ]
    assert [b.state for b in attempts_from(rows, end=9.0, running=False) if b.task == "b"] == ["lost"]
