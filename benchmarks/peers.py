"""dagon side by side with Dask distributed and Parsl: the same workloads, one machine, one table.

Each engine runs in its own fresh process (one at a time), at the same concurrency: dagon with two
agent processes x 1 slot on a real Mosquitto (stock configuration unless ``--tuned-broker``), Dask
with a LocalCluster of 2 worker processes x 1 thread, Parsl with a HighThroughputExecutor of 2
workers (LocalProvider). Workloads:

    noop     independent no-op python tasks                 tasks/s
    true     independent `bash -c true` shell tasks          tasks/s
    chain    a dependency chain of no-op tasks               ms per link
    fan      fan-out/fan-in: 1 root, N no-ops, 1 sink        wall s, peak RSS of every process
    idle     the engine's processes at idle                  RSS (sum over its processes)
    file     a 100 MiB file written by one task, read (sha256) by the next on the other worker

Dask and Parsl are the ``bench`` extra (``pip install '.[bench]'``); a missing peer prints a
"not installed" row, never a number. Ratios are dagon / best peer (for times: best peer / dagon,
so > 1 always means dagon is better).

    python benchmarks/peers.py [--scale 0.05] [--engines dagon,dask,parsl] [--tuned-broker]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import add_broker_arguments, print_table
from _peers import SIZES, run_engine

ENGINES = ("dagon", "dask", "parsl")
MODULES = {"dask": "distributed", "parsl": "parsl"}
HIGHER_IS_BETTER = {"noop": True, "true": True, "chain": False, "fan": False, "idle": False, "file": False}
UNITS = {
    "noop": "tasks/s",
    "true": "tasks/s",
    "chain": "ms/link (mean)",
    "fan": "s wall",
    "idle": "MiB RSS",
    "file": "s",
}


def installed(engine: str) -> bool:
    module = MODULES.get(engine)
    return module is None or importlib.util.find_spec(module) is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every task count (0.05: a quick run)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # one engine, in a child process
    add_broker_arguments(parser)
    args = parser.parse_args()
    sizes = {k: max(2, int(v * args.scale)) for k, v in SIZES.items()}
    sizes["file_mib"] = SIZES["file_mib"]
    if args.engine:
        print(json.dumps(run_engine(args.engine, sizes, tuned=args.tuned_broker)))
        return 0
    engines = [e for e in args.engines.split(",") if e]
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the machine may be shared: see"
        f" docs/benchmarks.md); broker: {'tuned' if args.tuned_broker else 'stock'} Mosquitto for dagon"
    )
    print("sizes: " + ", ".join(f"{k}={v:,}" for k, v in sizes.items()))
    results: dict[str, dict[str, float] | str] = {}
    procs: dict[str, dict[str, float]] = {}
    for engine in engines:
        if not installed(engine):
            results[engine] = "not installed: pip install '.[bench]'"
            continue
        cmd = [sys.executable, __file__, "--engine", engine, "--scale", str(args.scale)]
        if args.tuned_broker:
            cmd.append("--tuned-broker")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            results[engine] = f"failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}"
            continue
        out = json.loads(lines[-1])
        results[engine] = out["metrics"]
        procs[engine] = out["fan_peak_rss"]
        print(f"  {engine}: done (load {os.getloadavg()[0]:.1f})", flush=True)
    header = ["workload", "unit", *engines, "dagon vs best peer"]
    rows = []
    for key, unit in UNITS.items():
        row: list[object] = [key, unit]
        values: dict[str, float] = {}
        for engine in engines:
            got = results.get(engine)
            if isinstance(got, str):
                row.append(
                    got
                    if key == "noop" and got.startswith("not installed")
                    else "(see below)"
                    if key == "noop"
                    else "-"
                )
            elif got is None or key not in got:
                row.append("-")
            else:
                values[engine] = got[key]
                row.append(got[key])
        peers = {e: v for e, v in values.items() if e != "dagon"}
        if "dagon" in values and peers and values["dagon"] > 0:
            best = max(peers.values()) if HIGHER_IS_BETTER[key] else min(peers.values())
            ratio = values["dagon"] / best if HIGHER_IS_BETTER[key] else best / values["dagon"]
            row.append(f"{ratio:.2f}x (>1: dagon better)")
        else:
            row.append("-")
        rows.append(row)
    print_table("Same workloads, same machine, same concurrency (2 workers/slots)", header, rows)
    for engine in engines:
        got = results.get(engine)
        if isinstance(got, str):
            print(f"  {engine}: {got}")
    proc_rows = [[engine, name, mib] for engine, table in procs.items() for name, mib in table.items()]
    if proc_rows:
        print_table(
            f"Peak RSS of every process during the fan-out ({sizes['fan']:,} tasks)",
            ["engine", "process", "MiB"],
            proc_rows,
        )
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
