"""``dagon logs RUN TASK``: a task attempt's captured stdout or stderr, wherever it is.

What exists where:

* the full ``stdout``/``stderr`` live only in the attempt's scratch directory on its agent
  (``<scratch>/<run>/<task>-<attempt>/.dagon/``) — until garbage collection removes that
  directory (once every task reading its outputs succeeded, unless the run keeps its scratch)
  or ``dagon gc`` removes the run;
* the coordinator keeps the last 4 KiB of ``stderr`` of each task's last attempt (its result,
  in the run store and in the retained public task result); no copy of ``stdout``.

So, in order: the scratch directory on this machine (when this home's run store names it —
the embedded default, or the coordinator's own machine); else the agent's data server, with a
short-lived ``logs`` grant signed by this home's coordinator key (a standalone coordinator's
home: its agents trust that key) and bound to it — or, from a client machine, a grant the coordinator
mints for this home's client key on a signed request (:func:`ask_coordinator`, ``dagon.core._logdesk``),
bound with that key; else the stderr tail, said to be one. A
``stdout`` that exists nowhere any more is an error saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

from dagon._agentlist import local_enrolments
from dagon._approve import candidate
from dagon._keys import load_or_create
from dagon.agent._layout import indexed_name, task_dir_name
from dagon.core._logdesk import StoredTasks, stored_tasks
from dagon.protocol import (
    Announce,
    Codec,
    DagonError,
    Grant,
    ProtocolError,
    bind_grant,
    mint_grant,
    raw_public_key,
    topics,
)
from dagon.protocol._settings import closest

__all__ = ["LOG_GRANT_TTL", "STREAMS", "Attempt", "ask_coordinator", "direct", "locate", "write_log"]

STREAMS: Final = ("stdout", "stderr")
LOG_GRANT_TTL: Final = 60.0  # seconds: one download, right now
_CHUNK: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a task, and what is known about where its logs are."""

    run: str
    task: str
    attempt: int
    latest: int  # the task's last attempt
    agent: str | None
    workdir: str  # "" unknown; set only from this home's run store
    stderr_tail: str  # the coordinator's copy (last attempt only)
    state: str
    notes: list[str] = field(default_factory=list)


def _closest(name: str, names: Iterable[str]) -> str:
    found = closest(name, sorted(set(names)))
    return f" — did you mean {found!r}?" if found else ""


def _from_store(path: Path, run: str) -> StoredTasks | None:
    """``(task → its row, task → attempt → agent)`` from this home's run store, or None."""
    from dagon.core._store import RunStore

    if not path.exists():
        return None
    store = RunStore(path)
    try:
        return stored_tasks(store, run)
    finally:
        store.close()


def locate(
    run: str,
    task: str,
    attempt: int | None,
    *,
    store: Path,
    results: dict[str, dict[str, Any]] | None = None,
    run_known: bool = False,
) -> Attempt:
    """Which attempt is meant and what is known about it (this home's store first, then the
    retained public ``results`` of the run, task name → document).

    Raises:
        DagonError: unknown run, unknown task (the closest name suggested), attempt out of range.
    """
    found = _from_store(store, run)
    local = found is not None
    if found is not None:
        tasks, agents = found
    elif results or run_known:
        tasks = {name: dict(doc) for name, doc in (results or {}).items()}
        agents = {name: {int(doc.get("attempt") or 0): doc.get("agent")} for name, doc in tasks.items()}
    else:
        raise DagonError(
            f"no run {run!r} in the run store of {store.parent} nor on the broker: `dagon runs` lists the runs of"
            " this DAGON_HOME; for a standalone coordinator pass --broker URL (or set DAGON_HOME to its home)"
        )
    if task not in tasks:
        known = ", ".join(sorted(tasks)[:10]) or "none final yet"
        raise DagonError(f"run {run} has no task {task!r}{_closest(task, tasks)} (tasks: {known})")
    row = tasks[task]
    latest = int(row.get("attempt") or 0)
    if latest < 1:
        raise DagonError(f"task {task!r} of run {run} has not run yet ({row.get('state', 'pending')}): no logs")
    wanted = latest if attempt is None else attempt
    if not 1 <= wanted <= latest:
        raise DagonError(
            f"task {task!r} of run {run} has attempt{'s 1 to' if latest > 1 else ''} {latest} only, not {wanted}"
        )
    agent = agents.get(task, {}).get(wanted, row.get("agent") if wanted == latest else None)
    workdir = ""
    latest_dir = str(row.get("workdir") or "") if local else ""
    if latest_dir and (wanted == latest or agent == row.get("agent")):
        leaf = task_dir_name(run, task, latest)
        if Path(latest_dir).parts[-len(leaf.parts) :] == leaf.parts:
            root = Path(latest_dir).parents[len(leaf.parts) - 1]
            workdir = str(root / task_dir_name(run, task, wanted))
        elif wanted == latest:
            workdir = latest_dir  # DAGonStar's layout, <root>/<epoch ms>-<task>: an earlier attempt's is recorded
        else:
            with contextlib.suppress(DagonError):
                name = indexed_name(Path(latest_dir).parent, run, task, wanted)
                workdir = str(Path(latest_dir).parent / name) if name else ""
    tail = str(row.get("stderr_tail") or "") if wanted == latest else ""
    return Attempt(run, task, wanted, latest, agent, workdir, tail, str(row.get("state", "")))


def _copy(path: Path, out: BinaryIO) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            out.write(chunk)
    out.flush()


def _data_url(agent: str, statuses: list[tuple[str, bytes]], home: Path) -> str:
    """The data server URL agent ``agent`` announced, if its announce is signed by a key this home enrols
    (a forged announce must not receive a grant); "" otherwise."""
    topic = topics.agent_status(agent)
    payload = dict(statuses).get(topic)
    if not payload:
        return ""
    try:
        key = candidate(agent, [(topic, payload)]).key
        message = Codec(sender="cli").decode(payload, limit=topics.payload_limit(topic)).message
    except (DagonError, ProtocolError):
        return ""
    pins, own = local_enrolments(home)
    if not isinstance(message, Announce) or not (pins.get(agent) == key or (key == own and agent not in pins)):
        return ""
    return message.capabilities.data_url


def direct(found: Attempt, statuses: list[tuple[str, bytes]], home: Path) -> bool:
    """Whether this home can authorise a download from ``found``'s agent itself: it holds a
    coordinator key and enrols the agent (a standalone coordinator's home); else a client asks
    its coordinator (:func:`ask_coordinator`)."""
    if not found.agent or load_or_create(home, "coordinator", create=False) is None:
        return False
    return bool(_data_url(found.agent, statuses, home))


async def ask_coordinator(
    found: Attempt, stream: str, *, broker: str, coordinator: str, home: Path, insecure: bool, answer_timeout: float
) -> tuple[str, str] | str:
    """The agent's data URL and a ``logs`` grant bound with this home's client key, from the coordinator
    (``dagon.core._logdesk``); or why not (agent offline, no answer, this client's key not trusted — with
    the command that fixes it), for :func:`write_log` to say next to the stderr tail or in its error."""
    from dagon._client import connect
    from dagon._remote import RemoteRuns
    from dagon.protocol import RunId

    client_ = connect(broker, coordinator=coordinator, home=home, insecure=insecure, answer_timeout=answer_timeout)
    try:
        async with client_ as client:
            runs = client.runs
            if not isinstance(runs, RemoteRuns):  # pragma: no cover - a broker URL always gives a remote client
                return "no standalone coordinator to ask"
            return await runs.log_grant(RunId(found.run), found.task, found.attempt, stream)
    except DagonError as exc:  # refused (e.g. this client's key not trusted), no answer, no coordinator key
        return str(exc)  # pinned here: each message says how to fix it


async def _fetch(url: str, token: str, stream: str, out: BinaryIO) -> str:
    """Stream the log to ``out``; returns "" when done, else why not."""
    import aiohttp

    ca = os.environ.get("DAGON_DATA_TLS_CA")
    tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{url}/v1/logs/{stream}", headers={"Authorization": f"Bearer {token}"}, ssl=tls) as resp,
        ):
            if resp.status != 200:
                return f"its data server answered {resp.status}: {(await resp.text())[:200]}"
            async for chunk in resp.content.iter_chunked(_CHUNK):
                out.write(chunk)
            out.flush()
            return ""
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return f"its data server at {url} cannot be reached ({type(exc).__name__}: {exc})"


async def write_log(
    found: Attempt,
    stream: str,
    out: BinaryIO,
    *,
    home: Path,
    statuses: list[tuple[str, bytes]] | None,
    download: Callable[[Attempt, str], tuple[str, str] | str | None] | None = None,
) -> str:
    """Write the attempt's ``stream`` to ``out``: ``"full"``, or ``"tail"`` when only the coordinator's
    stderr tail is left (``found.notes`` then say why).

    ``download``: how a running coordinator (the dashboard), or a client machine through its
    coordinator (:func:`ask_coordinator`), reaches the agent — its data URL and a bound grant for
    (attempt, stream); ``None`` when the agent is not online, or why it cannot be reached —
    instead of this home's key and the retained ``statuses``.

    Raises:
        DagonError: nothing of ``stream`` exists any more (the message says why).
    """
    what = f"{stream} of {found.task!r} attempt {found.attempt} (run {found.run})"
    notes = found.notes
    if found.workdir:
        path = Path(found.workdir) / ".dagon" / stream
        if await asyncio.to_thread(path.is_file):
            await asyncio.to_thread(_copy, path, out)
            return "full"
        notes.append(
            f"its scratch directory {found.workdir} is gone (garbage collection removes it once every task reading"
            " its outputs succeeded, `dagon gc` once the run is over) or on another machine"
        )
    if found.agent and download is not None:
        where = download(found, stream)
        if where is None:
            notes.append(f"agent {found.agent} is not online with a data server")
        elif isinstance(where, str):
            notes.append(where)
        else:
            why = await _fetch(*where, stream, out)
            if not why:
                return "full"
            notes.append(f"agent {found.agent}: {why}")
    elif found.agent and statuses is not None:
        signer = await asyncio.to_thread(load_or_create, home, "coordinator", create=False)
        url = await asyncio.to_thread(_data_url, found.agent, statuses, home)
        if signer is None:
            notes.append(f"this DAGON_HOME ({home}) has no coordinator key to authorise a download from its agent")
        elif not url:
            notes.append(f"agent {found.agent} is not online with a data server this home's enrolments vouch for")
        else:
            grant = Grant(
                found.run, found.task, found.attempt, stream, "client", "logs", time.time() + LOG_GRANT_TTL,
                raw_public_key(signer.public_key),
            )  # fmt: skip
            why = await _fetch(url, bind_grant(mint_grant(signer, grant), signer), stream, out)
            if not why:
                return "full"
            notes.append(f"agent {found.agent}: {why}")
    elif found.agent and not found.workdir:
        notes.append("without --broker (or DAGON_BROKER) its agent cannot be asked")
    gone = "; ".join(notes) or "no copy is known"
    if stream == "stderr" and found.stderr_tail:
        out.write(found.stderr_tail.encode())
        out.flush()
        return "tail"
    kept = (
        "the coordinator keeps no copy of stdout"
        if stream == "stdout"
        else "the coordinator kept no stderr tail of this attempt"
    )
    raise DagonError(
        f"the {what} is not available: {gone}; {kept} (a run submitted with keep_scratch=True keeps every task's"
        " directory, logs included, until `dagon gc`)"
    )
