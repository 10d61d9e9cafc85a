"""The workloads of benchmarks/peers.py, one engine per process (imported by Dask and Parsl workers too:
the task functions live here, at module level)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

__all__ = ["SIZES", "run_engine"]

SIZES = {"noop": 10_000, "true": 2_000, "chain": 1_000, "fan": 100_000, "file_mib": 100}

Metrics = dict[str, float]


# -- task functions (Dask and Parsl run these in their workers) --------------------------------


def noop(*_: object, **__: object) -> int:
    return 0


def shell_true(*_: object) -> int:
    return subprocess.run(["bash", "-c", "true"], check=False).returncode


def count(parts: list[int]) -> int:
    return len(parts)


def count_inputs(inputs: tuple[int, ...] = ()) -> int:
    """Parsl resolves the futures of its ``inputs`` keyword (not those inside other arguments)."""
    return len(inputs)


def make_file(path: str, mib: int) -> str:
    with open(path, "wb") as f:
        f.write(b"\0" * (mib << 20))
    return path


def make_bytes(mib: int) -> bytes:
    return b"\0" * (mib << 20)


def sha_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- measuring -------------------------------------------------------------------------------


def _role(proc: psutil.Process) -> str:
    if proc.pid == os.getpid():
        return "client + coordinator/scheduler (this process)"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
    for needle, role in (
        ("mosquitto", "mosquitto"),
        ("agent_main", "dagon agent"),
        ("process_worker_pool", "parsl worker pool"),
        ("interchange", "parsl interchange"),
        ("dask worker", "dask worker"),
        ("from multiprocessing", "python (multiprocessing)"),
    ):
        if needle in cmd:
            return role
    with contextlib.suppress(psutil.Error):
        parent = proc.parent()
        if parent is not None and parent.pid != os.getpid():
            return f"{proc.name()} (under {parent.name()})"
    return proc.name()


MARKERS: list[str] = []  # processes whose command line holds one of these belong to the engine too


def _tree() -> list[psutil.Process]:
    """This process, its descendants, and the processes named by MARKERS (Parsl's LocalProvider
    starts the worker pool detached: it is no descendant) and their descendants."""
    me = psutil.Process()
    found = {p.pid: p for p in (me, *me.children(recursive=True))}
    if MARKERS:
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or ())
            if p.pid not in found and any(m in cmd for m in MARKERS):
                with contextlib.suppress(psutil.Error):
                    found.update({q.pid: q for q in (p, *p.children(recursive=True))})
    return list(found.values())


def footprint_mib() -> float:
    total = 0
    for p in _tree():
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


class PeakRss:
    """Samples the RSS of this process and all its descendants every 0.2 s (peak per process)."""

    def __init__(self) -> None:
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for p in _tree():
                with contextlib.suppress(psutil.Error):
                    rss = p.memory_info().rss
                    role, peak = self.peaks.get(p.pid, (_role(p), 0))
                    self.peaks[p.pid] = (role, max(peak, rss))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def table(self) -> dict[str, float]:
        out: dict[str, float] = {}
        seen: dict[str, int] = {}
        for _pid, (role, peak) in sorted(self.peaks.items()):
            seen[role] = seen.get(role, 0) + 1
            name = role if seen[role] == 1 else f"{role} #{seen[role]}"
            out[name] = round(peak / 2**20, 1)
        return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- dagon -----------------------------------------------------------------------------------


def _dagon(sizes: dict[str, int], tuned: bool) -> tuple[Metrics, dict[str, float]]:
    from _harness import Agents, mosquitto, workspace

    with mosquitto(tuned=tuned) as url, workspace() as tmp, Agents(url, 2, slots=1, root=Path(tmp)) as agents:
        return asyncio.run(_dagon_runs(url, agents, sizes))


async def _dagon_runs(url: str, agents: Any, sizes: dict[str, int]) -> tuple[Metrics, dict[str, float]]:
    import dagon

    noop_fn = "dagon.agent.builtins:noop"
    m: Metrics = {}
    async with dagon.connect(url) as client:
        assert client.coordinator is not None
        async with asyncio.timeout(60):
            await client.coordinator.wait_for_agents(agents.count)
        await asyncio.sleep(2.0)
        m["idle"] = footprint_mib()

        async def run(wf: dagon.Workflow) -> float:
            t0 = time.perf_counter()
            result = await (await client.submit(wf)).wait()
            if not result.ok:
                raise SystemExit(f"{wf.name} failed: {result.cause}")
            return time.perf_counter() - t0

        wf = dagon.Workflow("peers-noop")
        for i in range(sizes["noop"]):
            wf.python(f"t{i}", noop_fn)
        m["noop"] = sizes["noop"] / await run(wf)
        wf = dagon.Workflow("peers-true")
        for i in range(sizes["true"]):
            wf.shell(f"t{i}", "true")
        m["true"] = sizes["true"] / await run(wf)
        wf = dagon.Workflow("peers-chain")
        wf.python("c0", noop_fn)
        for i in range(1, sizes["chain"]):
            wf.python(f"c{i}", noop_fn, after=[f"c{i - 1}"])
        m["chain"] = await run(wf) * 1000 / sizes["chain"]
        mib = sizes["file_mib"]
        wf = dagon.Workflow("peers-file")
        wf.shell("make", f"head -c {mib << 20} /dev/zero > data.bin")
        wf.shell("read", "sha256sum workflow:///make/data.bin")
        m["file"] = await run(wf)
        wf = dagon.Workflow("peers-fan")
        wf.python("root", noop_fn)
        for i in range(sizes["fan"]):
            wf.python(f"t{i}", noop_fn, after=["root"])
        wf.python("sink", noop_fn, after=[f"t{i}" for i in range(sizes["fan"])])
        with PeakRss() as peaks:
            m["fan"] = await run(wf)
    return m, peaks.table()


# -- Dask ------------------------------------------------------------------------------------


def _dask(sizes: dict[str, int]) -> tuple[Metrics, dict[str, float]]:
    from distributed import Client, LocalCluster, wait

    m: Metrics = {}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        ) as cluster,
        Client(cluster) as client,
    ):
        time.sleep(2.0)
        m["idle"] = footprint_mib()
        n = sizes["noop"]
        m["noop"] = n / timed(lambda: client.gather(client.map(noop, range(n), pure=False)))
        n = sizes["true"]
        m["true"] = n / timed(lambda: client.gather(client.map(shell_true, range(n), pure=False)))

        def chain() -> None:
            f = client.submit(noop, pure=False)
            for _ in range(sizes["chain"] - 1):
                f = client.submit(noop, f, pure=False)
            f.result()

        m["chain"] = timed(chain) * 1000 / sizes["chain"]
        workers = list(client.scheduler_info()["workers"])

        def handoff() -> None:
            a = client.submit(make_bytes, sizes["file_mib"], workers=workers[:1], pure=False)
            b = client.submit(sha_bytes, a, workers=workers[1:], pure=False)
            b.result()

        m["file"] = timed(handoff)

        def fan() -> None:
            root = client.submit(noop, pure=False)
            mids = client.map(noop, range(sizes["fan"]), root=root, pure=False)
            sink = client.submit(count, mids, pure=False)
            wait(sink)
            sink.result()

        with PeakRss() as peaks:
            m["fan"] = timed(fan)
    return m, peaks.table()


# -- Parsl -----------------------------------------------------------------------------------


def _parsl(sizes: dict[str, int]) -> tuple[Metrics, dict[str, float]]:
    import parsl
    from parsl.app.app import bash_app, python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    # Workers are separate commands (interchange.py, process_worker_pool.py from this Python's
    # bin directory): they import the task functions from this module.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    m: Metrics = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            executors=[
                HighThroughputExecutor(
                    label="htex",
                    address="127.0.0.1",
                    max_workers_per_node=2,
                    provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
                )
            ],
            run_dir=str(Path(tmp) / "runinfo"),  # the worker pool's --logdir: found by MARKERS
            usage_tracking=0,
        )
        MARKERS.append(str(Path(tmp) / "runinfo"))
        dfk = parsl.load(config)
        try:
            p_noop = python_app(noop, executors=["htex"])
            p_count = python_app(count_inputs, executors=["htex"])
            p_make = python_app(make_file, executors=["htex"])
            p_sha = python_app(sha_file, executors=["htex"])

            def b_true() -> str:
                return "true"

            p_true = bash_app(b_true, executors=["htex"])
            p_noop().result()  # the pool is up
            time.sleep(2.0)
            m["idle"] = footprint_mib()
            n = sizes["noop"]
            m["noop"] = n / timed(lambda: [f.result() for f in [p_noop(i) for i in range(n)]])
            n = sizes["true"]
            m["true"] = n / timed(lambda: [f.result() for f in [p_true() for _ in range(n)]])

            def chain() -> None:
                f = p_noop()
                for _ in range(sizes["chain"] - 1):
                    f = p_noop(f)
                f.result()

            m["chain"] = timed(chain) * 1000 / sizes["chain"]
            path = str(Path(tmp) / "data.bin")
            m["file"] = timed(lambda: p_sha(p_make(path, sizes["file_mib"])).result())

            def fan() -> None:
                root = p_noop()
                mids = [p_noop(root) for _ in range(sizes["fan"])]
                p_count(inputs=mids).result()

            with PeakRss() as peaks:
                m["fan"] = timed(fan)
        finally:
            dfk.cleanup()
    return m, peaks.table()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Engines log to stdout/stderr; the parent reads one JSON line from stdout."""
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_engine(engine: str, sizes: dict[str, int], *, tuned: bool) -> dict[str, Any]:
    with _quiet():
        if engine == "dagon":
            metrics, peaks = _dagon(sizes, tuned)
        elif engine == "dask":
            metrics, peaks = _dask(sizes)
        else:
            metrics, peaks = _parsl(sizes)
    metrics = {k: round(v, 3) for k, v in metrics.items()}
    return {"metrics": metrics, "fan_peak_rss": peaks}
