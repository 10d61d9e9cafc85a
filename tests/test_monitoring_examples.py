"""examples/monitoring: the Grafana dashboard is valid JSON and only uses metrics dagon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from _broker import missing

EXAMPLES = Path(__file__).parent.parent / "examples" / "monitoring"
EXPORTED = {
    "dagon_tasks_total", "dagon_task_duration_seconds_bucket", "dagon_task_energy_joules_total",
    "dagon_agents_online", "dagon_agent_cpu_percent", "dagon_agent_memory_used_bytes",
    "dagon_agent_temperature_celsius", "dagon_agent_power_watts", "dagon_queue_depth", "dagon_protocol_rejections",
}  # fmt: skip


def test_dashboard_json_and_metric_names() -> None:
    dash = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bdagon_[a-z_]+", e)}
    assert used <= EXPORTED, used - EXPORTED
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("state", "duration", "cpu", "memory", "temperature", "power", "energy per task", "per runtime"):
        assert topic in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_scrape_config_targets_loopback_exporters() -> None:
    text = (EXAMPLES / "prometheus.yml").read_text()
    assert re.findall(r"job_name: (\S+)", text) == ["dagon-coordinator", "dagon-agent"]
    assert "127.0.0.1:9464" in text and "127.0.0.1:9465" in text


def test_scrape_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool is missing (run .ci/setup: apt-get install prometheus)")
    done = subprocess.run(
        [promtool, "check", "config", str(EXAMPLES / "prometheus.yml")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
