"""Where a :class:`~dagon.Client`'s runs live: one protocol, two backends.

* :class:`LocalRuns` — a coordinator in this process (the embedded default, or
  ``dagon.connect(broker)``): calls go straight to it.
* :class:`~dagon._remote.RemoteRuns` — a standalone ``dagon coordinator``: runs
  are handed over with signed inbox messages and followed on the public topics.

The client picks one when it connects and never asks again which one it has.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from dagon.agent import host_id
from dagon.core import Coordinator, RunEvent, RunResult, Workflow
from dagon.protocol import DagonError, RunId, TransportError
from dagon.protocol.transport import covered_files, pull

__all__ = ["LocalRuns", "Runs"]


async def _no_events() -> AsyncIterator[RunEvent]:
    return
    yield


class Runs(Protocol):
    """What a client does with runs, wherever their coordinator lives."""

    async def submit(self, workflow: Workflow, *, keep_scratch: bool) -> RunId: ...

    async def resume(self, run: RunId) -> tuple[RunId, str]: ...

    async def attach(self, run: RunId) -> str: ...

    def events(self, run: RunId) -> AsyncIterator[RunEvent]: ...

    async def wait(self, run: RunId) -> RunResult: ...

    async def cancel(self, run: RunId, reason: str) -> None: ...

    async def fetch(self, run: RunId, task: str, path: str, dest: Path) -> Path: ...


class LocalRuns:
    """Runs of the coordinator in this process."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def submit(self, workflow: Workflow, *, keep_scratch: bool) -> RunId:
        return await self.coordinator.submit(workflow, keep_scratch=keep_scratch)

    async def resume(self, run: RunId) -> tuple[RunId, str]:
        resumed = await self.coordinator.resume(run)
        return resumed, self.coordinator.engine.run(resumed).workflow.name

    async def attach(self, run: RunId) -> str:
        view = self.coordinator.engine.runs.get(run)
        if view is not None:
            return view.workflow.name
        return (await self.coordinator.wait(run)).workflow  # it left memory: the store (or RunNotFound)

    def events(self, run: RunId) -> AsyncIterator[RunEvent]:
        if run not in self.coordinator.engine.runs:
            return _no_events()  # it ended and left memory (``keep_finished``): nothing more happens
        return self.coordinator.events(run)

    async def wait(self, run: RunId) -> RunResult:
        return await self.coordinator.wait(run)

    async def cancel(self, run: RunId, reason: str) -> None:
        await self.coordinator.cancel(run, reason)

    async def fetch(self, run: RunId, task: str, path: str, dest: Path) -> Path:
        result = await self.coordinator.wait(run)
        outcome = result[task]
        if not outcome.ok or outcome.agent is None:
            raise DagonError(f"task {task!r} of run {run} did not succeed ({outcome.state.value}): nothing to fetch")
        source = self.coordinator.output_source(run, task, outcome.attempt, outcome.agent, path)
        local = Path(outcome.workdir)
        here = os.environ.get("DAGON_HOST_ID") or host_id()
        if source.source_host == here and await asyncio.to_thread(local.is_dir):
            await asyncio.to_thread(_copy_covered, local, path, dest)
            return dest
        if not source.url:
            raise DagonError(f"the output of {task!r} cannot be reached: agent {outcome.agent} serves no data")
        if source.url.startswith("ssh://"):
            raise DagonError(
                f"the output of {task!r} is reachable only over SSH ({source.url}{outcome.workdir}): copy it from there"
            )
        try:
            await pull(source.url, source.token, dest, wait_for_upload=300.0 if source.relay else 0.0)
        except TransportError as exc:
            raise DagonError(f"fetching {path} of {task!r}: {exc}") from exc
        return dest


def _copy_covered(root: Path, scope: str, dest: Path) -> None:
    """Copy the regular files of ``root`` that ``scope`` covers (as staging would) into ``dest``."""
    found = False
    for rel in covered_files(root, scope):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
        found = True
    if not found:
        raise DagonError(f"nothing in {root} matches {scope!r}")
