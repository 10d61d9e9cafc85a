"""Log downloads for clients: the coordinator's answer to a :class:`~dagon.protocol.LogsRequest`.

A task's full ``stdout``/``stderr`` live only in its attempt's scratch directory on its agent,
served by the agent's data server to the holder of a ``logs`` grant signed by the coordinator
key (agents trust no other). A client machine has no such key, so ``dagon logs`` there asks
the coordinator: the request is signed with the client's key (the codec and
:class:`~dagon.core._trust.CoordinatorTrust` admit only enrolled client keys), the coordinator
checks the run, task and attempt in its run store and that the agent is online with a data
server, and answers with that server's URL and a 60-second grant whose *holder* is the
requesting client's public key. The client binds it with its private key before use, so an
answer read off the broker by anyone else cannot be used (the data server checks the binding).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from dagon.core._answers import Answers
from dagon.core._datasources import DataSources
from dagon.core._store import RunStore, Store
from dagon.core._trust import CoordinatorTrust
from dagon.protocol import Envelope, LogsRequest, RunId

__all__ = ["LogDesk", "StoredTasks", "stored_tasks"]

log = logging.getLogger(__name__)

_STREAMS: Final = ("stdout", "stderr")

# task → its row (state, attempt, agent, result fields), task → attempt → agent
StoredTasks = tuple[dict[str, dict[str, Any]], dict[str, dict[int, str | None]]]


def stored_tasks(store: Store, run: str) -> StoredTasks | None:
    """What ``store`` knows of ``run``'s tasks and which agent ran each attempt; None: no such run."""
    stored = store.load(run)
    if stored is None:
        return None
    names = [t.get("name") for t in stored.spec.get("tasks", []) if isinstance(t, dict)]
    tasks: dict[str, dict[str, Any]] = {str(n): {"state": "pending", "attempt": 0} for n in names if n}
    agents: dict[str, dict[int, str | None]] = {}
    for name, (state, attempt, agent, _cause, result) in stored.tasks.items():
        tasks[name] = {"state": state, "attempt": attempt, "agent": agent, **(result or {})}
        agents.setdefault(name, {})[attempt] = agent
    if isinstance(store, RunStore):
        for _run, task, _old, new, attempt, agent, _cause, _at in store.transitions(run):
            if new in ("dispatched", "running") or attempt not in agents.get(task, {}):
                agents.setdefault(task, {})[attempt] = agent
    return tasks, agents


class LogDesk:
    """Answers clients' :class:`LogsRequest` (see the module doc).

    Args:
        coordinator_id: named in refusals.
        store: the run store (``None``: nothing can be located; every request is refused).
        data: mints the grants and knows which agents are online with a data server.
        trust: the client keys (``None`` with --insecure: no key to bind a grant to, refused).
        answers: queues the answers.
    """

    def __init__(
        self, coordinator_id: str, *, store: Store | None, data: DataSources, trust: CoordinatorTrust | None,
        answers: Answers,
    ) -> None:  # fmt: skip
        self._id = coordinator_id
        self._store = store
        self._data = data
        self._trust = trust
        self._answers = answers

    async def answer(self, msg: LogsRequest, envelope: Envelope, wake: Callable[[], None]) -> None:
        """Queue the answer to ``msg``; ``wake`` has it sent (the coordinator's drive loop)."""
        url, token, code, why = "", "", "", ""
        try:
            url, token, code, why = await self._grant(msg, envelope)
        except Exception as exc:  # a broken store must not leave the client waiting for ever
            log.exception("cannot answer a logs request for run %s", msg.run)
            code, why = "internal", f"{type(exc).__name__}: {exc}"
        if why:
            log.info("refused logs of %s/%s attempt %d: %s", msg.run, msg.task, msg.attempt, why)
        self._answers.answer(envelope, accepted=not why, reason=why, code=code, url=url, token=token)
        wake()

    async def _grant(self, msg: LogsRequest, envelope: Envelope) -> tuple[str, str, str, str]:
        """``(url, token, code, why not)``."""
        holder = self._trust.client_key(envelope.key_id) if self._trust is not None else b""
        if not holder:
            return "", "", "untrusted", f"coordinator {self._id!r} grants log downloads only to signed client keys"
        if msg.stream not in _STREAMS:
            return "", "", "invalid", f"no log stream {msg.stream!r} (stdout or stderr)"
        if self._store is None:
            return "", "", "unknown_run", f"coordinator {self._id!r} keeps no run store to find run {msg.run} in"
        found = await asyncio.to_thread(stored_tasks, self._store, msg.run)
        if found is None:
            return "", "", "unknown_run", f"coordinator {self._id!r} has no run {msg.run}"
        tasks, agents = found
        row = tasks.get(msg.task)
        if row is None:
            return "", "", "invalid", f"run {msg.run} has no task {msg.task!r}"
        latest = int(row.get("attempt") or 0)
        if not 1 <= msg.attempt <= latest:
            return (
                "",
                "",
                "invalid",
                f"task {msg.task!r} of run {msg.run} has no attempt {msg.attempt}",
            )
        agent = agents.get(msg.task, {}).get(msg.attempt)
        if not agent:
            return "", "", "invalid", f"no agent is known to have run attempt {msg.attempt} of task {msg.task!r}"
        where = self._data.log_download(RunId(msg.run), msg.task, msg.attempt, msg.stream, agent, holder=holder)
        if where is None:
            return "", "", "offline", f"agent {agent} is not online with a data server"
        return where[0], where[1], "", ""
