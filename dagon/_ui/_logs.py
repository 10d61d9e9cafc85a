"""The dashboard's log route: a task attempt's full stdout or stderr, fetched as ``dagon logs`` does
(the scratch directory on this machine, else the agent's data server with a grant the coordinator
signs and binds to its own key, else the coordinator's stderr tail). Secrets a task used are masked
in those files by its agent when the attempt ends, so what is served holds none."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import TYPE_CHECKING, Final

from aiohttp import web

from dagon._logs import STREAMS, Attempt, locate, write_log
from dagon.protocol import DagonError, RunId

if TYPE_CHECKING:
    from dagon.core import Coordinator

__all__ = ["LOG_LIMIT", "task_log"]

LOG_LIMIT: Final = 4 << 20  # bytes of a log a page gets: its end


class _Tail(io.BytesIO):
    """Keeps the last ``limit`` bytes written and counts what it dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._data = bytearray()
        self._limit = limit
        self.dropped = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._data += data
        extra = len(self._data) - self._limit
        if extra > 0:
            del self._data[:extra]
            self.dropped += extra
        return len(data)

    def getvalue(self) -> bytes:
        return bytes(self._data)


async def task_log(coordinator: Coordinator, request: web.Request) -> web.Response:
    run, task, stream = request.match_info["run"], request.match_info["task"], request.match_info["stream"]
    if stream not in STREAMS:
        raise web.HTTPNotFound(text=f"no log {stream!r}: stdout or stderr\n")
    raw = request.query.get("attempt")
    if raw is not None and not raw.isdigit():
        raise web.HTTPBadRequest(text=f"attempt must be a number, got {raw!r}\n")
    store = coordinator.store
    if store is None:
        raise web.HTTPNotFound(text="this coordinator keeps no run store, so it knows no task directories\n")

    def download(found: Attempt, name: str) -> tuple[str, str] | None:
        if found.agent is None:
            return None
        return coordinator.data.log_download(RunId(found.run), found.task, found.attempt, name, found.agent)

    out = _Tail(LOG_LIMIT)
    try:
        found = await asyncio.to_thread(locate, run, task, int(raw) if raw else None, store=Path(store.path))
        kind = await write_log(found, stream, out, home=Path(store.path).parent, statuses=None, download=download)
    except DagonError as exc:
        raise web.HTTPNotFound(text=f"{exc}\n") from None
    headers = {"X-Dagon-Log": kind, "X-Dagon-Attempt": str(found.attempt), "X-Dagon-Dropped": str(out.dropped)}
    return web.Response(body=out.getvalue(), content_type="text/plain", charset="utf-8", headers=headers)
