"""Memory after many runs: does the coordinator (and the broker) return to idle?

Runs ``--runs`` workflows of ``--tasks`` no-op python tasks one after the other on one
coordinator (in this process), a real stock Mosquitto and two real agent processes, and prints
the coordinator's and Mosquitto's RSS and the retained messages on the broker (counted with a
wildcard subscription) at idle, right after the last run, and once finished runs have left
memory (``keep_finished``). The baseline in the same invocation is the same workload with
finished runs kept for ever (what the coordinator did before dagon.core._retention).

    python benchmarks/memory.py [--runs 20] [--tasks 1000] [--keep-finished 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import psutil
from _harness import Agents, add_broker_arguments, mosquitto, print_table, rss_mb, workspace

import dagon
from dagon.protocol.transport import MqttTransport

FOREVER = 10.0**9


def workflow(name: str, n: int) -> dagon.Workflow:
    wf = dagon.Workflow(name)
    for i in range(n):
        wf.python(f"t{i}", "dagon.agent.builtins:noop")
    return wf


def broker_rss() -> float:
    for child in psutil.Process().children():
        if child.name() == "mosquitto":
            return float(child.memory_info().rss) / 2**20
    return float("nan")


async def broker_state(url: str) -> tuple[int, float]:
    """What Mosquitto says of itself ($SYS, every 10 s): retained messages (all topics, its own $SYS
    ones included) and the heap it uses in MiB. Counting retained messages with a wildcard
    subscription is capped on a stock broker (it drops what exceeds max_queued_messages)."""
    count, heap = -1, float("nan")
    async with MqttTransport(url, client_id=f"bench-count-{os.getpid()}") as reader:
        await reader.subscribe("$SYS/broker/retained messages/count", "$SYS/broker/heap/current", qos=0)
        messages = reader.messages()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(25):  # the next $SYS publication, not the retained (older) one
                while count < 0 or heap != heap:
                    msg = await anext(messages)
                    if msg.retain:
                        continue
                    if msg.topic.endswith("count"):
                        count = int(msg.payload)
                    else:
                        heap = int(msg.payload.split()[0]) / 2**20
    return count, heap


def sample(label: str, url: str) -> dict[str, float | str]:
    gc.collect()
    objects = len(gc.get_objects())
    rss = rss_mb()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the allocator keeps but no object uses
    retained, heap = asyncio.run(broker_state(url))
    return {"when": label, "coordinator": rss, "trimmed": rss_mb(), "objects": objects,
            "broker": broker_rss(), "heap": heap, "retained": retained}  # fmt: skip


async def workload(
    url: str, agents: Agents, runs: int, tasks: int, keep: float, settle: float
) -> list[dict[str, float | str]]:
    out = []
    async with dagon.connect(url, keep_finished=keep) as client:
        coordinator = client.coordinator
        assert coordinator is not None
        async with asyncio.timeout(30):
            await coordinator.wait_for_agents(agents.count)
        await asyncio.sleep(1.0)
        out.append(await asyncio.to_thread(sample, "idle", url))
        t0 = time.perf_counter()
        for i in range(runs):
            result = await (await client.submit(workflow(f"mem{i}", tasks))).wait()
            if not result.ok:
                raise SystemExit(f"run {i} failed: {result.cause}")
            if i + 1 in (runs // 2, runs):
                took = time.perf_counter() - t0
                out.append(await asyncio.to_thread(sample, f"after {i + 1} runs ({took:.0f} s)", url))
        if keep < FOREVER:
            for _ in range(int((keep + 60) / 0.2)):
                if not (coordinator.engine.runs or coordinator.feed.output.clears_pending):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            left = len(coordinator.engine.runs)
            out.append(await asyncio.to_thread(sample, f"{keep:g} s later, {left} runs in memory", url))
            if settle > 0:  # received message ids leave the replay cache after the freshness window
                await asyncio.sleep(settle)
                out.append(await asyncio.to_thread(sample, f"{settle:g} s more (replay window)", url))
    return out


def one(args: argparse.Namespace) -> None:
    keep = FOREVER if args.one == "kept" else args.keep_finished
    with (
        mosquitto(tuned=args.tuned_broker) as url,
        workspace() as tmp,
        Agents(url, 2, slots=8, root=Path(tmp)) as agents,
    ):
        rows = asyncio.run(workload(url, agents, args.runs, args.tasks, keep, args.settle))
    print(json.dumps(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--keep-finished", type=float, default=5.0, help="seconds finished runs stay (dagon: 600)")
    parser.add_argument("--settle", type=float, default=130.0, help="seconds to wait once runs left memory")
    parser.add_argument("--one", choices=("kept", "evicted"), help=argparse.SUPPRESS)
    add_broker_arguments(parser)
    args = parser.parse_args()
    if args.one:
        one(args)
        return 0
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores shared); stock Mosquitto unless --tuned-broker;"
          f" each mode in a fresh process, broker and agents")  # fmt: skip
    table = []
    for mode in ("kept", "evicted"):
        cmd = [sys.executable, __file__, "--one", mode, "--runs", str(args.runs), "--tasks", str(args.tasks),
               "--keep-finished", str(args.keep_finished), "--settle", str(args.settle)]  # fmt: skip
        cmd += ["--tuned-broker"] if args.tuned_broker else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            return 1
        name = "finished runs kept for ever (baseline)" if mode == "kept" else f"keep_finished={args.keep_finished:g} s"
        for row in json.loads(done.stdout.strip().splitlines()[-1]):
            table.append([name, row["when"], row["coordinator"], row["trimmed"], row["objects"], row["broker"],
                          row["heap"], row["retained"]])  # fmt: skip
    print_table(
        f"{args.runs} runs x {args.tasks:,} no-op tasks, one coordinator, 2 agents x 8 slots",
        [
            "mode",
            "when",
            "coord. RSS MiB",
            "after malloc_trim",
            "live objects",
            "Mosquitto RSS MiB",
            "Mosquitto heap ($SYS) MiB",
            "retained msgs ($SYS, all topics)",
        ],
        table,
    )
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
