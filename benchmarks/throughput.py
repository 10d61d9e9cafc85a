"""Throughput: N independent no-op (python runtime) and N `true` (shell) tasks
through a real Mosquitto with 1 and 2 agent processes, against the machine's raw
spawn rate (asyncio spawning `true` with the same concurrency) in the same run.

    python benchmarks/throughput.py [--tasks 5000] [--shell-tasks 2000]

Targets (issue #8): >= 3,000 no-op tasks/s; shell tasks >= 70 % of the raw spawn rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Agents, add_broker_arguments, mosquitto, print_table, workspace

import dagon

NOOP_TARGET = 3000.0
SHELL_SHARE_TARGET = 0.70


async def raw_spawn_rate(n: int, concurrency: int, argv: tuple[str, ...] = ("true",)) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(*argv)
            await proc.wait()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - start)


def noop_workflow(n: int) -> dagon.Workflow:
    wf = dagon.Workflow("bench-noop")
    for i in range(n):
        wf.python(f"t{i}", "dagon.agent.builtins:noop")
    return wf


def shell_workflow(n: int) -> dagon.Workflow:
    wf = dagon.Workflow("bench-true")
    for i in range(n):
        wf.shell(f"t{i}", "true")
    return wf


async def timed_run(url: str, wf: dagon.Workflow, agents: int, *, public: bool = True) -> float:
    async with dagon.connect(url, publish_results=public) as client:
        assert client.coordinator is not None
        async with asyncio.timeout(30):
            await client.coordinator.wait_for_agents(agents)
        start = time.perf_counter()
        handle = await client.submit(wf)
        result = await handle.wait()
        elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"benchmark run failed: {result.cause}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000, help="no-op tasks per run")
    parser.add_argument("--shell-tasks", type=int, default=2000, help="`true` tasks per run")
    parser.add_argument("--noop-slots", type=int, default=64, help="agent slots for no-op runs")
    parser.add_argument("--shell-slots", type=int, default=4, help="agent slots for shell runs")
    add_broker_arguments(parser)
    args = parser.parse_args()

    rows: list[tuple[object, ...]] = []
    ok = True
    with mosquitto(tuned=args.tuned_broker) as url, workspace() as tmp:
        for count in (1, 2):
            with Agents(url, count, slots=args.noop_slots, root=Path(tmp) / f"noop{count}"):
                elapsed = asyncio.run(timed_run(url, noop_workflow(args.tasks), count))
                quiet = asyncio.run(timed_run(url, noop_workflow(args.tasks), count, public=False))
            rate = args.tasks / elapsed
            ok &= rate >= NOOP_TARGET
            rows.append(("no-op (python)", count, args.tasks, elapsed, rate, f">= {NOOP_TARGET:,.0f}/s",
                         "ok" if rate >= NOOP_TARGET else "BELOW"))  # fmt: skip
            rows.append(("no-op, public results off", count, args.tasks, quiet, args.tasks / quiet, "info", ""))
        for count in (1, 2):
            concurrency = count * args.shell_slots
            raw = asyncio.run(raw_spawn_rate(args.shell_tasks, concurrency))
            with Agents(url, count, slots=args.shell_slots, root=Path(tmp) / f"shell{count}"):
                elapsed = asyncio.run(timed_run(url, shell_workflow(args.shell_tasks), count))
            rate = args.shell_tasks / elapsed
            share = rate / raw
            ok &= share >= SHELL_SHARE_TARGET
            raw_bash = asyncio.run(raw_spawn_rate(args.shell_tasks, concurrency, ("/bin/bash", "-c", "true")))
            rows.append((f"raw spawn `true` (c={concurrency})", "-", args.shell_tasks, args.shell_tasks / raw, raw,
                         "baseline", ""))  # fmt: skip
            rows.append((f"raw spawn `bash -c true` (c={concurrency})", "-", args.shell_tasks,
                         args.shell_tasks / raw_bash, raw_bash, "info", f"{raw_bash / raw:.0%} of raw"))  # fmt: skip
            verdict = f"{share:.0%} " + ("ok" if share >= SHELL_SHARE_TARGET else "BELOW")
            target = f">= {SHELL_SHARE_TARGET:.0%} of raw"
            rows.append(("`true` (process)", count, args.shell_tasks, elapsed, rate, target, verdict))
    print_table(
        "throughput through a real Mosquitto (tasks/s)",
        ("workload", "agents", "tasks", "seconds", "tasks/s", "target", "result"),
        rows,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
