"""Cost of the agent's result spool per result, against what an outbox flush costs anyway.

Every result is written to the spool (SQLite, WAL, synchronous=NORMAL) before it is sent;
a flush of N results is one transaction. This measures, for batch sizes seen on the fast
path (1 on a dependency chain, tens to hundreds under throughput load), the microseconds
per result of ``ResultSpool.put`` and of the acknowledgement's delete, next to the baseline
of the same run: signing and encoding those results into a ``TasksFinished`` message, which
the outbox does for every flush with or without a spool.

    python benchmarks/spool.py [--results 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import print_table

from dagon.agent._spool import ResultSpool
from dagon.protocol import AgentId, Codec, ResultStatus, RunId, Signer, TaskName, TaskRef, TaskResult, TasksFinished


def result(i: int) -> TaskResult:
    return TaskResult(
        RunId("bench-run"), TaskName(f"task-{i}"), 1, ResultStatus.SUCCEEDED, 0, 1.0, 2.0,
        workdir=f"/var/lib/dagon/scratch/bench-run/task-{i}-1", value=None,
    )  # fmt: skip


async def measure(batch: int, total: int, workdir: Path) -> tuple[float, float, float]:
    spool = ResultSpool(workdir / f"spool-{batch}.sqlite", agent=AgentId("bench"))
    await spool.open()
    codec = Codec(sender="agent/bench", signer=Signer.generate())
    results = [result(i) for i in range(total)]
    batches = [results[i : i + batch] for i in range(0, total, batch)]

    began = time.perf_counter()
    for items in batches:
        codec.encode(TasksFinished(agent=AgentId("bench"), results=tuple(items)))
    encode = (time.perf_counter() - began) / total * 1e6

    began = time.perf_counter()
    for items in batches:
        await spool.put([("coordinator", r) for r in items])
    put = (time.perf_counter() - began) / total * 1e6

    began = time.perf_counter()
    for items in batches:
        refs = [TaskRef(r.run, r.task, r.attempt) for r in items]
        spool.acknowledge(refs)
        await spool._commit([], refs)  # what the spool's writer loop does per wake-up
    ack = (time.perf_counter() - began) / total * 1e6
    spool._acked.clear()
    await spool.close()
    return encode, put, ack


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=int, default=4000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 16, 64, 256):
            encode, put, ack = await measure(batch, args.results, Path(tmp))
            rows.append((batch, args.results, encode, put, ack, f"{(put + ack) / encode:.2f}x"))
    print_table(
        "result spool, microseconds per result (baseline: signing + encoding the report, same run)",
        ["batch", "results", "baseline encode µs", "spool put µs", "ack delete µs", "spool / baseline"],
        rows,
    )


if __name__ == "__main__":
    asyncio.run(main())
