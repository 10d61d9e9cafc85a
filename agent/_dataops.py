"""What an agent does with the files in its scratch root at the coordinator's request, beside running
tasks: which directory a data-plane grant opens, garbage collection (``DeleteData``) and uploads of an
attempt's outputs to the coordinator's relay (``UploadOutputs``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from pathlib import Path
from typing import Any

from dagon.agent._config import AgentConfig, data_server_tls
from dagon.agent._layout import task_dir, task_dir_name
from dagon.agent._runner import TaskRunner
from dagon.agent._scratch_gc import delete_runs, delete_tasks
from dagon.agent._staging import CHECKPOINTS
from dagon.protocol import DagonError, DeleteData, Grant, TaskRef, UploadOutputs
from dagon.protocol.transport import LazyDataServer

__all__ = ["DataOps"]

log = logging.getLogger("dagon.agent._agent")  # the agent's own log lines, as before the split

Spawn = Callable[[Coroutine[Any, Any, None], str], object]


class DataOps:
    """The scratch root's data requests of one agent.

    Args:
        config: the agent's configuration (scratch root, whether it stores checkpoints).
        runner: binds relay tokens to the agent's key and holds its TLS settings.
        busy: the attempts the agent holds now (never garbage-collected under a running task).
        spawn: starts a background task in the agent's task group (uploads).
        authorize: checks a data-plane token and returns its grant (raises when refused).

    Attributes:
        server: the agent's data server (started on first use), serving what :meth:`locate` finds.
    """

    def __init__(
        self,
        config: AgentConfig,
        runner: TaskRunner,
        *,
        busy: Callable[[], Collection[TaskRef]],
        spawn: Spawn,
        authorize: Callable[[str], Grant],
    ) -> None:
        self.config = config
        self.server = LazyDataServer(
            authorize=authorize,
            locate=self.locate,
            uploads=config.checkpoint_store,
            host=config.data_host,
            port=config.data_port,
            max_transfers=config.max_transfers,
            tls=data_server_tls(config),
        )
        self._runner = runner
        self._busy = busy
        self._spawn = spawn
        self._uploading: set[tuple[str, str, int, str]] = set()

    def locate(self, grant: Grant) -> Path:
        """The directory a grant is about: a task directory of the scratch root, or (on a checkpoint
        store) the copy of another agent's checkpoint that was uploaded here."""
        if self.config.checkpoint_store:
            copy = self.config.scratch / CHECKPOINTS / task_dir_name(grant.run, grant.task, grant.attempt)
            if grant.op == "write" or copy.is_dir():
                return copy
        return task_dir(self.config.scratch, grant.run, grant.task, grant.attempt)

    async def delete(self, message: DeleteData) -> None:
        """Garbage collection: really delete (never rename) directories inside the scratch root."""
        held = self._busy()
        busy = {(ref.run, ref.task, ref.attempt) for ref in held}
        refs = [r for r in message.tasks if (r.run, r.task, r.attempt) not in busy]
        runs = [r for r in message.runs if not any(ref.run == r for ref in held)]
        scratch = self.config.scratch
        tasks = await asyncio.to_thread(delete_tasks, scratch, refs)
        whole = await asyncio.to_thread(delete_runs, scratch, runs)
        log.info(
            "agent %s: garbage collection removed %d task and %d run directories", self.config.agent_id, tasks, whole
        )

    def upload(self, message: UploadOutputs) -> None:
        """Push an attempt's outputs to the relay in the background (a request delivered twice, once)."""
        key = (message.run, message.task, message.attempt, message.path)
        if key in self._uploading:
            return  # the same request delivered again
        self._uploading.add(key)
        self._spawn(self._upload(message, key), f"upload-{message.run}-{message.task}")

    async def _upload(self, message: UploadOutputs, key: tuple[str, str, int, str]) -> None:
        agent = self.config.agent_id
        try:
            root = await asyncio.to_thread(task_dir, self.config.scratch, message.run, message.task, message.attempt)
            began = time.monotonic()
            from dagon.protocol.transport import push  # the HTTP client loads on first use

            sent = await push(message.url, self._runner.bind(message.token), root, message.path, tls=self._runner.tls)
            log.info(
                "agent %s uploaded %s of %s/%s to the relay (%d bytes in %.2f s)",
                agent, message.path, message.run, message.task, sent, time.monotonic() - began,
            )  # fmt: skip
        except DagonError as exc:
            log.warning(
                "agent %s could not upload %s of %s/%s: %s", agent, message.path, message.run, message.task, exc
            )
        finally:
            self._uploading.discard(key)
