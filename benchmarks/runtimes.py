"""Runtimes compared: the same 3-task pipeline (A -> B -> C, a file passed on through
``workflow://``) with the process, Docker (a container per task, and ``reuse``) and Charliecloud
runtimes, on this machine.

Real components only: a real Mosquitto, one real ``dagon-agent`` process offering
all three runtimes, a private dockerd (started and stopped here, by PID, with the
flags of ENVIRONMENT.md) and a busybox image built locally (no pulls).

    python benchmarks/runtimes.py [--runs 5] [--watts-per-core 10] [--plot PATH.svg]

Reported per runtime (median over the runs, the runtimes interleaved run by run
so machine noise hits them alike):
- wall: submit to result of the whole pipeline;
- overhead/task: (wall - wall of the process runtime) / 3 — the process runtime is the baseline;
- host CPU: busy CPU seconds of the whole machine during the run (psutil, all
  processes: agent, dockerd, containerd, shims, ch-run; other users' load too);
- peak RSS: the agent's process tree (ch-run and the task's processes included), plus
  for Docker the engine's daemons (dockerd, containerd, shims), sampled every 20 ms;
- energy: MODELLED, not measured — host CPU seconds x the stated watts per busy
  core (these VMs have no power meter, RAPL or hwmon sensor).

The plot is an SVG written by this script (no plotting library needed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from _containers import BUSYBOX_IMAGE, Dockerd, busybox_rootfs, charliecloud_binary, dockerd_binary
from _harness import Agents, add_broker_arguments, mosquitto, print_table, workspace

import dagon

# docker-reuse: the Docker runtime with reuse=true (docker exec in a long-lived container).
RUNTIMES = ("process", "docker", "docker-reuse", "charliecloud")
COMMANDS = (
    ("A", "seq 1 50000 > a.txt"),
    ("B", "sort -r workflow:///A/a.txt | md5sum > b.txt"),
    ("C", "cat workflow:///B/b.txt > c.txt && wc -c < c.txt"),
)
ENGINE_NAMES = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc")


def pipeline(runtime: str, image: str, n: int) -> dagon.Workflow:
    wf = dagon.Workflow(f"bench-{runtime}-{n}")
    for name, command in COMMANDS:
        if runtime == "process":
            wf.shell(name, command)
        elif runtime == "docker-reuse":
            wf.container(name, image=image, command=command, runtime="docker", reuse=True)
        else:
            wf.container(name, image=image, command=command, runtime=runtime)
    return wf


def _busy_cpu() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


class PeakRss:
    """Samples the summed RSS of the agent's process tree and the engine processes."""

    def __init__(self, agent_pid: int, *, engine: bool) -> None:
        self.agent = psutil.Process(agent_pid)
        self.engine = engine
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        procs = [self.agent]
        try:
            procs += self.agent.children(recursive=True)
        except psutil.Error:
            pass
        if self.engine:
            procs += [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith(ENGINE_NAMES)]
        total = 0
        for proc in {p.pid: p for p in procs}.values():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def measure(url: str, agent_pid: int, images: dict[str, str], runs: int) -> dict[str, list[tuple[float, ...]]]:
    samples: dict[str, list[tuple[float, ...]]] = {rt: [] for rt in RUNTIMES}
    async with dagon.connect(url) as client:
        assert client.coordinator is not None
        async with asyncio.timeout(60):
            await client.coordinator.wait_for_agents(1)
        for n in range(runs + 1):  # run 0 warms caches (image layers, page cache) and is not counted
            for runtime in RUNTIMES:
                cpu0 = _busy_cpu()
                with PeakRss(agent_pid, engine=runtime.startswith("docker")) as rss:
                    start = time.perf_counter()
                    handle = await client.submit(pipeline(runtime, images[runtime], n))
                    result = await handle.wait()
                    wall = time.perf_counter() - start
                cpu = _busy_cpu() - cpu0
                if not result.ok:
                    raise SystemExit(f"{runtime} pipeline failed: {result.cause}")
                if n:
                    samples[runtime].append((wall, cpu, rss.peak / 2**20))
    return samples


def svg_bars(path: Path, title: str, series: dict[str, dict[str, float]], units: dict[str, str]) -> None:
    """A small grouped bar chart: one panel per metric, one bar per runtime."""
    colours = {"process": "#4c78a8", "docker": "#f58518", "docker-reuse": "#e45756", "charliecloud": "#54a24b"}
    panel_w, panel_h, top, bottom = 300, 220, 50, 40
    width = panel_w * len(series) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{panel_h + top + bottom}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>',
    ]
    for i, (metric, values) in enumerate(series.items()):
        x0 = 20 + i * panel_w
        top_value = max(values.values()) or 1.0
        parts.append(f'<text x="{x0}" y="{top - 10}" font-weight="bold">{metric} ({units[metric]})</text>')
        parts.append(
            f'<line x1="{x0}" y1="{top + panel_h}" x2="{x0 + panel_w - 30}" y2="{top + panel_h}" stroke="#333"/>'
        )
        bar_w = (panel_w - 60) / len(values)
        for j, (runtime, value) in enumerate(values.items()):
            h = max(0.0, value) / top_value * (panel_h - 20)
            x = x0 + 5 + j * bar_w
            y = top + panel_h - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 8:.1f}" height="{h:.1f}" fill="{colours[runtime]}"/>'
            )
            parts.append(f'<text x="{x:.1f}" y="{y - 3:.1f}">{value:.3g}</text>')
            parts.append(f'<text x="{x:.1f}" y="{top + panel_h + 14}">{runtime}</text>')
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--watts-per-core", type=float, default=10.0, help="modelled power of one busy core (W)")
    parser.add_argument("--plot", type=Path, default=Path.home() / ".cache" / "dagon-bench" / "runtimes.svg")
    add_broker_arguments(parser)
    args = parser.parse_args()
    binary = dockerd_binary()
    if binary is None or charliecloud_binary() is None:
        sys.exit("dockerd/docker, busybox-static or ch-run missing: run .ci/setup")
    with mosquitto(tuned=args.tuned_broker) as url, workspace() as tmp:
        root = Path(tmp)
        engine = Dockerd(binary=binary, workdir=root / "dockerd")
        try:
            engine.start()
            engine.import_busybox()
            ch_image = busybox_rootfs(root / "ch-busybox")
            images = {
                "process": "",
                "docker": BUSYBOX_IMAGE,
                "docker-reuse": BUSYBOX_IMAGE,
                "charliecloud": str(ch_image),
            }
            os.environ["DOCKER_HOST"] = engine.url  # the agent process finds the private engine
            with Agents(url, 1, slots=2, root=root, extra=["--runtimes", "docker,charliecloud"]) as agents:
                samples = asyncio.run(measure(url, agents.procs[0].pid, images, args.runs))
        finally:
            engine.stop()
    med = {rt: tuple(statistics.median(s[k] for s in samples[rt]) for k in range(3)) for rt in RUNTIMES}
    base_wall = med["process"][0]
    rows = []
    for rt in RUNTIMES:
        wall, cpu, rss = med[rt]
        rows.append((
            rt, args.runs, f"{wall:.3f}", f"{(wall - base_wall) / len(COMMANDS) * 1000:+.0f}",
            f"{cpu:.2f}", f"{rss:.0f}", f"{cpu * args.watts_per_core:.1f}",
        ))  # fmt: skip
    print_table(
        f"3-task pipeline per runtime (median of {args.runs}; energy MODELLED at {args.watts_per_core:g} W per busy"
        " core, no meter)",
        ("runtime", "runs", "wall s", "overhead ms/task vs process", "host CPU s", "peak RSS MB",
         "energy J (modelled)"),
        rows,
    )  # fmt: skip
    svg_bars(
        args.plot,
        "dagon: 3-task pipeline per runtime (energy modelled)",
        {
            "wall": {rt: med[rt][0] for rt in RUNTIMES},
            "host CPU": {rt: med[rt][1] for rt in RUNTIMES},
            "peak RSS": {rt: med[rt][2] for rt in RUNTIMES},
            "energy (modelled)": {rt: med[rt][1] * args.watts_per_core for rt in RUNTIMES},
        },
        {"wall": "s", "host CPU": "s", "peak RSS": "MB", "energy (modelled)": "J"},
    )
    print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
