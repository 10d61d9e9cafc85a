"""A fleet on one coordinator: 500 agents, heartbeats and telemetry at their defaults, 10,000 tasks.

The agents are **lightweight agents speaking the real protocol over the real broker**
(benchmarks/_fleet.py): each has its own MQTT connection to a real Mosquitto (stock configuration
unless ``--tuned-broker``), its own client id and Last Will, and sends what a ``dagon-agent`` sends —
a retained signed Announce, a signed Heartbeat every 5 s and a Telemetry sample (plus the public
JSON telemetry) every 5 s riding on the heartbeat, as a ``dagon-agent`` sends it since issue 21
(``--telemetry-apart``: in a signed message of its own, as before) — verifies its assignments with
the real codec and reports every task started and finished. They do not run processes: a task
takes no time, so what is measured is the coordinator. They live in ``--processes`` processes apart
from the coordinator (this process, ``dagon.connect``), whose CPU time (user + system, not wall) is
what the table reports.

    python benchmarks/fleet.py [--agents 500] [--tasks 10000] [--window 60] [--processes 2] [--telemetry-apart]

Targets (issue 21): heartbeats + telemetry cost < 10 % of a core on the coordinator; dispatch stays
fair; a 10,000-task run over the fleet completes; the coordinator's memory per agent is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import psutil
from _harness import add_broker_arguments, mosquitto, print_table, rss_mb, workspace

import dagon
from dagon._keys import add_pin, agent_signer, coordinator_signer, enroll
from dagon._settings import dagon_home
from dagon.core import CoordinatorListener
from dagon.core._events import AgentChanged
from dagon.protocol import raw_public_key


def cpu_seconds() -> float:
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


async def cpu_share(seconds: float) -> float:
    """Percent of one core this process used over ``seconds`` of wall time."""
    c0, t0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds() - c0) / (time.monotonic() - t0)


def fleet_home(root: Path, names: list[str]) -> Path:
    """One agent key for the whole fleet (each id pinned to it), enrolled with this coordinator."""
    home = root / "fleet"
    home.mkdir(parents=True, exist_ok=True)
    coordinator = dagon_home()
    coordinator_signer(coordinator)
    enroll(home, coordinator / "keys" / "coordinator.pub")
    raw = raw_public_key(agent_signer(home).public_key)
    for name in names:
        add_pin(coordinator / "keys" / "known_agents", name, raw)
    return home


class Losses(CoordinatorListener):
    """Counts the agents the coordinator gave up on (heartbeat TTL or Last Will)."""

    def __init__(self) -> None:
        self.lost = 0

    def agent_changed(self, change: AgentChanged) -> None:
        if not change.online:
            self.lost += 1


async def watch_backlog(coordinator: Any, peak: list[float]) -> None:
    """The deepest the coordinator's inbound queue (received, not yet handled) got, and the longest
    its event loop did not get to this task (a 0.1 s sleep that took longer: the loop was busy)."""
    transport = coordinator._transport  # a benchmark may look inside: MqttTransport.queue_depth()
    while True:
        peak[0] = max(peak[0], transport.queue_depth())
        t0 = time.monotonic()
        await asyncio.sleep(0.1)
        peak[1] = max(peak[1], time.monotonic() - t0 - 0.1)


def jain(values: list[int]) -> float:
    """Jain's fairness index: 1.0 when every agent got the same number of tasks."""
    total = sum(values)
    return total * total / (len(values) * sum(v * v for v in values)) if total else 0.0


async def measure(url: str, args: argparse.Namespace, root: Path) -> tuple[list[list[object]], dict[str, int]]:
    n = args.agents
    names = [f"fleet-{i:04d}" for i in range(n)]
    home = fleet_home(root, names)
    rows: list[list[object]] = []
    procs: list[subprocess.Popen[bytes]] = []
    async with dagon.connect(url, keep_finished=5.0) as client:
        coordinator = client.coordinator
        assert coordinator is not None
        await asyncio.sleep(2.0)
        gc.collect()
        rss0 = rss_mb()
        idle = await cpu_share(args.window / 2)
        rows.append(["coordinator CPU, no agents (baseline)", f"{idle:.2f} % of a core", ""])
        per = -(-n // args.processes)
        cmd = [sys.executable, str(Path(__file__).parent / "_fleet.py"), "--url", url, "--home", str(home)]
        t0 = time.monotonic()
        for first in range(0, n, per):
            count = min(per, n - first)
            argv = [*cmd, "--first", str(first), "--count", str(count), *(["--telemetry-apart"] * args.telemetry_apart)]
            procs.append(await asyncio.to_thread(subprocess.Popen, argv, stdout=subprocess.PIPE, stderr=sys.stderr))
        try:
            async with asyncio.timeout(300):
                await coordinator.wait_for_agents(n)
            joined = time.monotonic() - t0
            rows.append([f"{n} agents online", f"{joined:.1f} s", ""])
            await asyncio.sleep(6.0)  # every agent has sent a heartbeat and a telemetry sample
            gc.collect()
            rss1 = rss_mb()
            share = await cpu_share(args.window)
            ok = share - idle < 10.0
            rows.append(
                [f"coordinator CPU, {n} agents idle ({args.window:g} s window)", f"{share:.2f} % of a core",
                 f"{share - idle:+.2f} over baseline; target < 10 %: {'met' if ok else 'MISSED'}"]
            )  # fmt: skip
            rows.append(
                ["coordinator memory per agent", f"{(rss1 - rss0) * 1024 / n:.1f} KiB",
                 f"RSS {rss0:.1f} -> {rss1:.1f} MiB"]
            )  # fmt: skip
            fleet_cpu = sum(
                float(sum(psutil.Process(p.pid).cpu_times()[:2])) for p in procs if p.poll() is None
            )  # fmt: skip
            rows.append(
                ["fleet processes' CPU so far (the simulation)", f"{fleet_cpu:.1f} s", f"{len(procs)} processes"]
            )
            wf = dagon.Workflow("fleet")
            for i in range(args.tasks):
                wf.python(f"t{i}", "dagon.agent.builtins:noop")
            losses, backlog = Losses(), [0.0, 0.0]
            coordinator.add_listener(losses)
            watcher = asyncio.create_task(watch_backlog(coordinator, backlog))
            c0, t1 = cpu_seconds(), time.monotonic()
            result = await (await client.submit(wf)).wait()
            took, used = time.monotonic() - t1, cpu_seconds() - c0
            watcher.cancel()
            done = sum(1 for t in result.tasks.values() if t.ok)
            rows.append(
                [f"{args.tasks:,}-task run over the fleet", f"{result.state.value} in {took:.1f} s",
                 f"{done:,} succeeded; coordinator CPU {used:.1f} s = {1000 * used / args.tasks:.2f} ms/task"]
            )  # fmt: skip
            rows.append(
                ["during the run", f"{losses.lost} agents given up",
                 f"deepest inbound backlog {backlog[0]:,.0f} messages; longest event-loop stall {backlog[1]:.1f} s"]
            )  # fmt: skip
            per_agent: dict[str, int] = dict.fromkeys(names, 0)
            for t in result.tasks.values():
                if t.agent in per_agent:
                    per_agent[t.agent] += 1
            counts = list(per_agent.values())
            rows.append(
                ["dispatch fairness (tasks per agent)",
                 f"Jain index {jain(counts):.3f}",
                 f"min {min(counts)}, median {statistics.median(counts):g}, max {max(counts)};"
                 f" {sum(1 for c in counts if c == 0)} agents got none"]
            )  # fmt: skip
        finally:
            reported: dict[str, int] = {}
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                out, _ = p.communicate(timeout=60)
                lines = out.decode().strip().splitlines()
                if lines:
                    reported.update(json.loads(lines[-1]))
    return rows, reported


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of idle fleet over which CPU is measured")
    parser.add_argument("--processes", type=int, default=2, help="processes the lightweight agents live in")
    parser.add_argument(
        "--telemetry-apart", action="store_true", help="samples in messages of their own (agents before issue 21)"
    )
    add_broker_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    print(
        f"{args.agents} lightweight agents speaking the real protocol over a real Mosquitto"
        f" ({'tuned' if args.tuned_broker else 'stock'} config), one MQTT connection each, in {args.processes}"
        f" processes; heartbeat 5 s and telemetry 5 s (the agent defaults), the sample"
        f" {'in a message of its own' if args.telemetry_apart else 'riding on the heartbeat'};"
        f" coordinator in this process."
        f" Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (CPU time is measured, not wall)."
    )
    with mosquitto(tuned=args.tuned_broker) as url, workspace() as tmp:
        rows, reported = asyncio.run(measure(url, args, Path(tmp)))
    print_table("Fleet on one coordinator", ["measure", "result", "detail"], rows)
    if reported:
        print(f"  the fleet's own count of tasks it reported finished: {sum(reported.values()):,}")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
