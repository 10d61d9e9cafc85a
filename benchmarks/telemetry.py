"""Telemetry overhead: CPU% (of one core) and RSS of an idle ``dagon-agent`` process with telemetry
sampling every 1 s and 5 s, against the same agent with telemetry off (the baseline, same run).

The three agents run side by side on one real Mosquitto; CPU is the agent process's user+system
time over the measurement window. Power comes from the CPU model (no sensors on our VMs).

    python benchmarks/telemetry.py [--seconds 30]

Targets (issue #7), at 1 s sampling: <= 1 % of one core and <= 40 MB RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Agents, add_broker_arguments, mosquitto, print_table, rss_mb, workspace

TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MB = 40.0
SETTINGS = (("off (baseline)", "0"), ("5 s", "5"), ("1 s", "1"))


# What an idle agent's RSS is made of: modules imported cumulatively, in the order the agent
# needs them, in a fresh interpreter (shared-library pages count in RSS, as in the table above).
IMPORT_GROUPS = (
    ("python + asyncio (ssl, OpenSSL)", "asyncio"),
    ("msgpack (psutil: loaded by the probe itself)", "msgpack"),
    ("cryptography (Ed25519 signing)", "cryptography.hazmat.primitives.asymmetric.ed25519"),
    ("paho-mqtt + aiomqtt", "aiomqtt"),
    ("aiohttp (data server/client)", "aiohttp.web"),
    ("dagon.protocol (+ transport)", "dagon.protocol.transport"),
    ("dagon.agent + CLI", "dagon.cli._agent"),
)
_PROBE = """
import psutil, sys
p = psutil.Process()
last = p.memory_info().rss
print(f"interpreter {last / 2**20:.2f}")
for label, modules in GROUPS:
    exec("import " + modules)
    rss = p.memory_info().rss
    print(f"{label}\t{(rss - last) / 2**20:.2f}\t{rss / 2**20:.2f}\t{len(sys.modules)}")
    last = rss
"""


def import_breakdown() -> list[list[object]]:
    code = f"GROUPS = {IMPORT_GROUPS!r}\n{_PROBE}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rows: list[list[object]] = []
    for line in out.splitlines()[1:]:
        label, delta, total, modules = line.split("\t")
        rows.append([label, float(delta), float(total), int(modules)])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    add_broker_arguments(parser)
    args = parser.parse_args()
    with workspace() as tmp, mosquitto(tuned=args.tuned_broker) as url, contextlib.ExitStack() as stack:
        groups = []
        for i, (label, interval) in enumerate(SETTINGS):
            os.environ["DAGON_TELEMETRY_INTERVAL"] = interval
            groups.append((label, stack.enter_context(Agents(url, 1, slots=2, root=Path(tmp) / f"s{i}"))))
        os.environ.pop("DAGON_TELEMETRY_INTERVAL", None)
        time.sleep(5.0)  # start-up (imports, connect) is not idle time
        procs = {label: psutil.Process(agents.procs[0].pid) for label, agents in groups}
        before = {label: sum(p.cpu_times()[:2]) for label, p in procs.items()}
        start = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - start
        rows: list[tuple[str, float, float]] = []
        for label, p in procs.items():
            cpu = 100 * (sum(p.cpu_times()[:2]) - before[label]) / elapsed
            rss = rss_mb(p.pid)
            rows.append((label, cpu, rss))
    base_cpu = rows[0][1]
    table = [[*r, float(r[1]) - float(base_cpu)] for r in rows]
    print_table(
        f"idle agent over {elapsed:.0f} s (targets at 1 s: <= {TARGET_CPU_PERCENT}% CPU, <= {TARGET_RSS_MB} MB RSS)",
        ["telemetry", "CPU % of one core", "RSS MB", "CPU % over baseline"],
        table,
    )
    one = rows[-1]
    cpu_ok, rss_ok = float(one[1]) <= TARGET_CPU_PERCENT, float(one[2]) <= TARGET_RSS_MB
    print(f"1 s sampling: CPU target {'met' if cpu_ok else 'NOT met'}, RSS target {'met' if rss_ok else 'NOT met'}")
    print(f"sampling cost over the idle baseline at 1 s: {float(one[1]) - float(base_cpu):+.2f}% of one core")
    print_table(
        "RSS by import (cumulative, fresh interpreter)", ["imports", "+RSS MB", "RSS MB", "modules"], import_breakdown()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
