"""Placement cost in the sans-IO engine: scheduling N tasks on a few agents, no I/O.

Compares the default policy (``Scored``: constraints, cpu/memory slots, data
locality, load) against the older ``LeastLoaded`` policy as the baseline, in the
same run, on two shapes: a flat fan-out of no-op tasks and a chain of
producer/consumer pairs whose consumers carry ``workflow://`` inputs (locality
scoring and garbage-collection reference counts at work).

    python benchmarks/placement.py [--tasks 100000] [--agents 4] [--slots 64]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import print_table

from dagon.core import AgentAnnounced, Dispatch, Engine, LeastLoaded, RunSubmitted, Scored, TaskFinished, Workflow
from dagon.core._placement import Placement
from dagon.protocol import AgentId, Capabilities, OutputFile, ResultStatus, RunId, TaskResult


def caps(slots: int, host: str) -> Capabilities:
    return Capabilities(
        hostname=host, host_id=host, arch="x86_64", os="linux", cpus=slots, memory=64 * 2**30,
        runtimes=("process",), labels={}, slots=slots, version="bench",
    )  # fmt: skip


def fan(n: int) -> Workflow:
    wf = Workflow("fan")
    for i in range(n):
        wf.shell(f"t{i}", "true")
    return wf


def pairs(n: int) -> Workflow:
    wf = Workflow("pairs")
    for i in range(n // 2):
        wf.shell(f"p{i}", "head -c 100 /dev/zero > out.bin")
        wf.shell(f"c{i}", f"cat workflow:///p{i}/out.bin")
    return wf


def drive(policy: Placement, wf: Workflow, agents: int, slots: int) -> float:
    engine = Engine(placement=policy, rng=random.Random(1))
    for i in range(agents):
        engine.handle(AgentAnnounced(AgentId(f"a{i}"), caps(slots, f"h{i % 2}")), 0.0)
    run = RunId("bench")
    began = time.perf_counter()
    engine.handle(RunSubmitted(run, wf, wf.graph()), 0.0)
    now = 0.0
    out = OutputFile("out.bin", 100, "0" * 64)
    while engine.run(run).unfinished:
        now += 0.001
        batch = [c for c in engine.schedule(now) if isinstance(c, Dispatch)]
        for d in batch:
            a = d.assignment
            result = TaskResult(a.run, a.task, a.attempt, ResultStatus.SUCCEEDED, 0, now, now, outputs=(out,))
            engine.handle(TaskFinished(d.agent, result), now)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=64)
    args = parser.parse_args()
    rows = []
    for shape, build in (("fan-out", fan), ("producer/consumer pairs", pairs)):
        wf = build(args.tasks)
        base = drive(LeastLoaded(), wf, args.agents, args.slots)
        scored = drive(Scored(), wf, args.agents, args.slots)
        rows.append((shape, len(wf), f"{len(wf) / base:,.0f}", f"{len(wf) / scored:,.0f}", f"{scored / base:.2f}x"))
    print_table(
        f"engine placement, {args.agents} agents x {args.slots} slots (tasks/s, higher is better)",
        ("shape", "tasks", "LeastLoaded (baseline)", "Scored (default)", "time vs baseline"),
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
