"""Where a task's cost goes: CPU per task in every process (coordinator, agents, Mosquitto), then
a profile of the coordinator and the agents split by what the time is spent on.

    python benchmarks/taskcost.py [--tasks 5000] [--shell-tasks 2000] [--agents 2] [--slots 1]

The peers' concurrency by default (2 agents x 1 slot, as in ``benchmarks/peers.py``), on a stock
Mosquitto (``--tuned-broker`` for the tuned one). Two passes over the same workloads:

1. **unprofiled**: tasks/s, and CPU time per task of each process from the kernel's accounting
   (``/proc``: user + system, the agents' task processes included), against the raw spawn rate
   of ``true`` at the same concurrency for the shell tasks (the baseline in the same run);
2. **profiled**: cProfile in the coordinator and in each agent, every function's own time put in
   one bucket (MQTT client, signatures, codec, event loop, sockets, processes, file system, the
   run store, dagon's own code by package, …). cProfile slows Python code more than C code, so
   the buckets are shares of the profiled time, to read with the unprofiled CPU per process.

Issue #21 asks for the reasons behind every target missed; this is the profile it asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Agents, add_broker_arguments, mosquitto, print_table, workspace
from throughput import noop_workflow, raw_spawn_rate, shell_workflow

import dagon

# An agent process under cProfile, switched on by SIGUSR1 and off by SIGUSR2 (the measured window:
# not its start-up), its profile written when it stops (SIGTERM ends agent_main normally).
PROFILED_AGENT = """
import cProfile, os, signal
from dagon.cli import agent_main
profile = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
signal.signal(signal.SIGUSR2, lambda *_: profile.disable())
try:
    code = agent_main()
finally:
    profile.disable()
    profile.dump_stats(os.environ["DAGON_BENCH_PROFILE"])
raise SystemExit(code)
"""

# (bucket, test on "file:function") in order: the first that matches takes the function's own time.
IDLE = "waiting in epoll (idle: not counted)"
BUCKETS: list[tuple[str, Callable[[str], bool]]] = [
    (IDLE, lambda k: "'poll' of 'select.epoll'" in k),
    ("handing work to threads (to_thread, GIL)", lambda k: "_queue.SimpleQueue" in k or "threading.py" in k
     or "/concurrent/futures/" in k),
    ("signatures (Ed25519 sign/verify)", lambda k: "ed25519" in k.lower() or ":<method 'sign'" in k
     or ":<method 'verify'" in k),
    ("MQTT client (paho, aiomqtt)", lambda k: "/paho/" in k or "/aiomqtt/" in k),
    ("msgpack / JSON encoding", lambda k: "msgpack" in k or "/json/" in k or "_json" in k),
    ("sockets (send/recv syscalls)", lambda k: "_socket.socket" in k or "'recv" in k or "'send" in k),
    ("processes (spawn, wait)", lambda k: "subprocess" in k or "_posixsubprocess" in k or "fork_exec" in k
     or "waitpid" in k or "/unix_events.py" in k or "pidfd" in k),
    ("run store / spool (sqlite)", lambda k: "sqlite3" in k or "_store.py" in k or "_writer.py" in k
     or "_spool.py" in k),
    ("file system (scratch, .dagon files)", lambda k: any(f"'{n}'" in k or f"posix.{n}" in k for n in (
        "open", "mkdir", "stat", "lstat", "rename", "replace", "unlink", "write", "read", "close", "fsync",
        "scandir", "chmod", "utime", "rmdir", "symlink", "link", "listdir", "access", "getcwd"))
     or "pathlib.py" in k or "posixpath.py" in k or "shutil.py" in k or "tempfile.py" in k),
    ("event loop (asyncio, selectors)", lambda k: "/asyncio/" in k or "selectors.py" in k or "'select'" in k
     or "'poll'" in k or "epoll" in k or "_contextvars" in k),
    ("dagon: coordinator core", lambda k: "/core/" in k),
    ("dagon: agent", lambda k: "/agent/" in k),
    ("dagon: protocol, transport", lambda k: "/protocol/" in k),
    ("dagon: client, API", lambda k: "/dagon/" in k),
    ("logging", lambda k: "/logging/" in k),
    ("dataclasses, enum, typing", lambda k: "dataclasses.py" in k or "enum.py" in k or "typing.py" in k),
]  # fmt: skip
OTHER = "other (stdlib, builtins)"


def bucket_of(key: str) -> str:
    for name, test in BUCKETS:
        if test(key):
            return name
    return OTHER


def profile_shares(paths: list[Path]) -> tuple[dict[str, float], float]:
    """Seconds of own time per bucket over the profiles in ``paths``, and their total."""
    seconds: dict[str, float] = defaultdict(float)
    for path in paths:
        stats: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        for (file, _, func), (_, _, own, _, _) in stats.items():
            seconds[bucket_of(f"{file}:{func}")] += own
    return dict(seconds), sum(v for k, v in seconds.items() if k != IDLE)


def cpu_seconds(proc: psutil.Process, *, children: bool) -> float:
    """User + system CPU seconds of ``proc`` (with its waited-for children: the tasks an agent ran)."""
    t = proc.cpu_times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def broker_process() -> psutil.Process:
    found = [p for p in psutil.Process().children() if p.name() == "mosquitto"]
    if len(found) != 1:
        raise SystemExit(f"expected one mosquitto child process, found {len(found)}")
    return found[0]


Row = tuple[str, int, float, dict[str, float]]


async def measured(
    url: str, agents: Agents, workflows: list[tuple[str, dagon.Workflow]], profile: Path | None
) -> list[Row]:
    """Per workload: (name, tasks, seconds, {process: CPU seconds})."""
    import cProfile

    broker = broker_process()
    workers = [psutil.Process(p.pid) for p in agents.procs]
    rows: list[Row] = []
    async with dagon.connect(url) as client:
        coordinator = client.coordinator
        assert coordinator is not None
        async with asyncio.timeout(60):
            await coordinator.wait_for_agents(agents.count)
        warm = dagon.Workflow("warm-up")
        for i in range(200):
            warm.python(f"w{i}", "dagon.agent.builtins:noop")
        await (await client.submit(warm)).wait()
        profiler = cProfile.Profile() if profile is not None else None
        for name, wf in workflows:
            before = (
                time.process_time(),
                [cpu_seconds(w, children=True) for w in workers],
                cpu_seconds(broker, children=False),
            )
            if profiler is not None:
                profiler.enable()
                for w in workers:
                    w.send_signal(signal.SIGUSR1)
            start = time.perf_counter()
            result = await (await client.submit(wf)).wait()
            elapsed = time.perf_counter() - start
            if profiler is not None:
                profiler.disable()
                for w in workers:
                    w.send_signal(signal.SIGUSR2)
            if not result.ok:
                raise SystemExit(f"{name}: run failed: {result.cause}")
            cpu = {
                "coordinator": time.process_time() - before[0],
                "agents": sum(cpu_seconds(w, children=True) for w in workers) - sum(before[1]),
                "Mosquitto": cpu_seconds(broker, children=False) - before[2],
            }
            rows.append((name, len(wf), elapsed, cpu))
        if profiler is not None and profile is not None:
            profiler.dump_stats(str(profile / "coordinator.prof"))
    return rows


def run_pass(args: argparse.Namespace, *, profiled: bool) -> tuple[list[Row], Path | None]:
    workflows = [("no-op python", noop_workflow(args.tasks)), ("true (shell)", shell_workflow(args.shell_tasks))]
    with mosquitto(tuned=args.tuned_broker) as url, workspace() as tmp:
        root = Path(tmp)
        profile_dir = root / "profiles" if profiled else None
        if profile_dir is not None:
            profile_dir.mkdir()
        agents = Agents(url, args.agents, slots=args.slots, root=root / ("prof" if profiled else "plain"),
                        code=PROFILED_AGENT if profiled else None,
                        env_for=(lambda i: {"DAGON_BENCH_PROFILE": str(profile_dir / f"agent{i}.prof")})
                        if profile_dir is not None else None)  # fmt: skip
        with agents:
            rows = asyncio.run(measured(url, agents, workflows, profile_dir))
        if profile_dir is None:
            return rows, None
        kept = root.parent / f"profiles-{root.name}"
        profile_dir.rename(kept)
        return rows, kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000, help="no-op python tasks")
    parser.add_argument("--shell-tasks", type=int, default=2000, help="`true` shell tasks")
    parser.add_argument("--agents", type=int, default=2, help="agent processes")
    parser.add_argument("--slots", type=int, default=1, help="slots per agent")
    add_broker_arguments(parser)
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in psutil.getloadavg())}; {psutil.cpu_count()} cores", flush=True)

    rows, _ = run_pass(args, profiled=False)
    spawn = asyncio.run(raw_spawn_rate(args.shell_tasks, args.agents * args.slots))
    table = []
    for name, n, seconds, cpu in rows:
        total = sum(cpu.values())
        per_task = [f"{1e6 * cpu[p] / n:,.0f}" for p in cpu]
        busy = total / seconds / (psutil.cpu_count() or 1)
        table.append((name, n, f"{n / seconds:,.0f}", *per_task, f"{1e6 * total / n:,.0f}", f"{busy:.0%}"))
    table.append(("raw spawn of `true` (baseline)", args.shell_tasks, f"{spawn:,.0f}", "-", "-", "-", "-", "-"))
    print_table(
        f"CPU per task, unprofiled ({args.agents} agents x {args.slots} slot(s), "
        f"{'tuned' if args.tuned_broker else 'stock'} Mosquitto)",
        ("workload", "tasks", "tasks/s", "coordinator µs/task", "agents µs/task (tasks incl.)", "Mosquitto µs/task",
         "all µs/task", "machine busy"),
        table,
    )  # fmt: skip

    _, profiles = run_pass(args, profiled=True)
    assert profiles is not None
    sides = {
        "coordinator": profile_shares([profiles / "coordinator.prof"]),
        "agents": profile_shares(sorted(profiles.glob("agent*.prof"))),
    }
    names = [b for b, _ in BUCKETS if b != IDLE] + [OTHER]
    out = []
    for b in names:
        out.append((b, *(f"{100 * own.get(b, 0.0) / profiled:.1f} %" for own, profiled in sides.values())))
    print_table(
        "where the profiled time goes (own time per bucket; both workloads; cProfile inflates Python code)",
        ("bucket", "coordinator", "agents"),
        out,
    )
    for side, (own, profiled) in sides.items():
        print(f"  {side}: {profiled:.2f} s profiled, {own.get(IDLE, 0.0):.2f} s idle in epoll (not counted)")
    print(f"\nprofiles kept in {profiles} (python -m pstats FILE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
