"""A real Prometheus server scrapes a coordinator's and an agent's exporters while a workflow runs."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _broker import missing

from dagon._metrics_http import serve_metrics
from dagon.agent._exporter import AgentMetrics
from dagon.core import RunState
from dagon.core._metrics import CoordinatorMetrics
from dagon.protocol.transport import MemoryHub

from ._stack import memory_stack, taskflow

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


async def _poll(url: str, ok: Any, *, within: float = 45.0) -> Any:
    async with asyncio.timeout(within):
        while True:
            try:
                doc = await asyncio.to_thread(_get, url)
                if ok(doc):
                    return doc
            except OSError:
                pass
            await asyncio.sleep(0.5)


async def test_prometheus_scrapes_agent_and_coordinator(hub: MemoryHub, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus is not installed (run .ci/setup: apt-get install prometheus)")
    async with memory_stack(hub, tmp_path) as (coordinator, agents):
        cmetrics = CoordinatorMetrics()
        cmetrics.bind(coordinator)
        amet = AgentMetrics(agents[0])
        with serve_metrics(cmetrics.registry, port=0) as cport, serve_metrics(amet.registry, port=0) as aport:
            port = _free_port()
            config = tmp_path / "prometheus.yml"
            config.write_text(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "scrape_configs:\n"
                f"  - job_name: coordinator\n    static_configs: [{{targets: ['127.0.0.1:{cport}']}}]\n"
                f"  - job_name: agent\n    static_configs: [{{targets: ['127.0.0.1:{aport}']}}]\n"
            )
            proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                api = f"http://127.0.0.1:{port}/api/v1"
                await _poll(
                    f"{api}/targets",
                    lambda d: [t["health"] for t in d["data"]["activeTargets"]] == ["up", "up"],
                )
                run = await coordinator.submit(taskflow())
                assert (await coordinator.wait(run)).state is RunState.SUCCEEDED
                query = urllib.parse.urlencode({"query": 'sum by (job) (dagon_tasks_total{state="succeeded"})'})

                def both_five(d: Any) -> bool:
                    got = {r["metric"]["job"]: float(r["value"][1]) for r in d["data"]["result"]}
                    return got == {"coordinator": 5.0, "agent": 5.0}

                await _poll(f"{api}/query?{query}", both_five)
                online = await asyncio.to_thread(_get, f"{api}/query?query=dagon_agents_online")
                assert float(online["data"]["result"][0]["value"][1]) == 1.0
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
