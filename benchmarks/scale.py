"""Scale: a fan-out/fan-in DAG (one root, N parallel no-op tasks, one sink)
through a real Mosquitto and two agent processes.

Reports build+validate time, run time, peak coordinator RSS and memory per
task, and the RSS of an idle agent. The baseline in the same run is the
coordinator process's RSS before the workflow is built.

    python benchmarks/scale.py [--tasks 100000]

Targets (issue #8): validates in <= 2 s, completes in <= 30 s, <= 2 KB of
coordinator memory per task, an idle agent <= 40 MB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Agents, add_broker_arguments, mosquitto, print_table, rss_mb, workspace

import dagon


def fan(n: int) -> dagon.Workflow:
    wf = dagon.Workflow("bench-fan")
    wf.python("root", "dagon.agent.builtins:noop")
    for i in range(n):
        wf.python(f"t{i}", "dagon.agent.builtins:noop", after=["root"])
    wf.python("sink", "dagon.agent.builtins:noop", after=[f"t{i}" for i in range(n)])
    return wf


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(url: str, n: int, agents: Agents) -> dict[str, float]:
    async with dagon.connect(url) as client:
        assert client.coordinator is not None
        async with asyncio.timeout(30):
            await client.coordinator.wait_for_agents(agents.count)
        await asyncio.sleep(1.0)  # let agents settle before reading idle RSS
        idle_agent = max(agents.rss_mb())
        base = rss_mb()
        t0 = time.perf_counter()
        wf = fan(n)
        wf.graph()
        build = time.perf_counter() - t0
        t1 = time.perf_counter()
        handle = await client.submit(wf)
        result = await handle.wait()
        run = time.perf_counter() - t1
        peak = max(peak_rss_mb(), rss_mb())
    if not result.ok:
        raise SystemExit(f"fan-out run failed: {result.cause}")
    return {"build": build, "run": run, "base": base, "peak": peak, "idle_agent": idle_agent}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--slots", type=int, default=64)
    add_broker_arguments(parser)
    args = parser.parse_args()
    with (
        mosquitto(tuned=args.tuned_broker) as url,
        workspace() as tmp,
        Agents(url, 2, slots=args.slots, root=Path(tmp)) as agents,
    ):
        m = asyncio.run(measure(url, args.tasks, agents))
    n = args.tasks + 2
    per_task_kb = (m["peak"] - m["base"]) * 1024 / n
    checks = [
        ("build + validate", f"{m['build']:.2f} s", "<= 2 s", m["build"] <= 2.0),
        ("run to completion", f"{m['run']:.2f} s ({n / m['run']:,.0f} tasks/s)", "<= 30 s", m["run"] <= 30.0),
        ("coordinator RSS before build (baseline)", f"{m['base']:.1f} MB", "-", True),
        ("coordinator peak RSS", f"{m['peak']:.1f} MB", "-", True),
        ("coordinator memory per task", f"{per_task_kb:.2f} KB", "<= 2 KB", per_task_kb <= 2.0),
        ("idle agent RSS", f"{m['idle_agent']:.1f} MB", "<= 40 MB", m["idle_agent"] <= 40.0),
    ]
    print_table(
        f"fan-out/fan-in of {args.tasks:,} tasks (real Mosquitto, 2 agents)",
        ("measure", "value", "target", "result"),
        [(a, b, c, "ok" if d else "MISSED") for a, b, c, d in checks],
    )
    return 0 if all(c[3] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
