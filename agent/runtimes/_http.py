"""HTTP tasks (``wf.http(...)``, DAGonStar's REST calls): one request, its response saved as an output.

The task's command is the URL. The request's method, headers, body and the statuses
that count as success come from ``runtime_options`` (see :func:`dagon.core.http_task`).
Header values and the URL may hold ``secret://NAME`` placeholders: they are resolved on
the agent and never written anywhere — ``.dagon/stdout`` records the method, the URL as
the workflow wrote it and the status; the agent redacts substituted values from what it
reports. A body comes from JSON data in the options, or from a staged ``workflow://``
file (streamed from disk).

5xx answers and connection errors are retried with capped, jittered exponential backoff
(``retries`` more tries); any other status outside ``expect`` fails at once. The task's
``timeout`` bounds all tries together. The response body is written to ``output`` in
the task directory (then manifested and staged like any task output); status and
headers go to ``.dagon/response.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

import aiohttp

from dagon.agent._staging import input_root
from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._jobs import OptionError, Options
from dagon.protocol import ResultStatus

__all__ = ["HTTP_OPTIONS", "HttpRuntime"]

log = logging.getLogger(__name__)

HTTP_OPTIONS: Final = frozenset(
    {"method", "headers", "json", "body_file", "body_text", "expect", "output", "retries", "backoff"}
)
_CHUNK: Final = 64 * 1024
_MAX_BACKOFF: Final = 30.0


class _Retryable(Exception):
    pass


def _body_path(execution: Execution, ref: str) -> Path:
    for item in execution.assignment.inputs:
        if item.ref == ref:
            return input_root(execution.workdir, item) / item.path
    raise OptionError(f"http body_file {ref!r} was not staged: it must also be one of the task's inputs")


def _save(meta: Path, doc: dict[str, Any]) -> None:
    meta.write_text(json.dumps(doc, indent=1))


class HttpRuntime(Runtime):
    """Runs HTTP tasks with one shared aiohttp session (connection pooling, no cookies kept).

    Args:
        max_backoff: cap of the delay between retries in seconds.
    """

    name: ClassVar[str] = "http"

    def __init__(self, *, max_backoff: float = _MAX_BACKOFF) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._max_backoff = max_backoff

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=True)
        return self._session

    async def run(self, execution: Execution) -> Outcome:
        a = execution.assignment
        try:
            opts = Options("http", a.runtime_options, HTTP_OPTIONS)
            method = (opts.text("method", "GET") or "GET").upper()
            headers = {k: execution.resolve(v) for k, v in opts.str_map("headers").items()}
            url = execution.command.strip()
            expect = _expect(a.runtime_options.get("expect"))
            retries = opts.integer("retries", minimum=0)
            retries = 3 if retries is None else retries
            backoff = a.runtime_options.get("backoff", 0.5)
            if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
                raise OptionError(f"http option 'backoff' must be seconds >= 0, got {backoff!r}")
            output = opts.text("output", "response") or "response"
            target = (execution.workdir / output).resolve()
            if not target.is_relative_to(execution.workdir.resolve()) or ".dagon" in Path(output).parts:
                raise OptionError(f"http option 'output' must be a path inside the task directory, got {output!r}")
            body_file = opts.text("body_file")
            body_path = _body_path(execution, body_file) if body_file else None
        except (OptionError, ValueError) as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        shown = f"{method} {a.command.strip()}"

        def safe(text: str) -> str:  # the URL as written (placeholders), never the resolved one
            return text.replace(url, a.command.strip()) if url != a.command.strip() else text

        began = time.monotonic()
        try:
            async with asyncio.timeout(a.timeout):
                status, attempts = await self._with_retries(
                    method, url, headers, a.runtime_options, body_path, target, expect, retries, float(backoff),
                    execution,
                )  # fmt: skip
        except TimeoutError:
            error = f"{shown}: no answer within the {a.timeout:g} s timeout"
            await asyncio.to_thread(_log_line, execution, error)
            return Outcome(ResultStatus.TIMEOUT, None, error=error)
        except _Retryable as exc:
            error = safe(f"{shown}: {exc} (after {retries + 1} tries)")
            await asyncio.to_thread(_log_line, execution, error)
            return Outcome(ResultStatus.FAILED, None, error=error)
        except aiohttp.InvalidURL:
            return Outcome(ResultStatus.ERROR, None, error=f"http task: {a.command.strip()!r} is not a valid URL")
        except aiohttp.ClientError as exc:
            error = safe(f"{shown}: {type(exc).__name__}: {exc}")
            await asyncio.to_thread(_log_line, execution, error)
            return Outcome(ResultStatus.FAILED, None, error=error)
        except OSError as exc:
            return Outcome(ResultStatus.ERROR, None, error=f"{shown}: cannot read the body file: {exc}")
        seconds = time.monotonic() - began
        note = f"{shown} -> HTTP {status} in {seconds:.2f} s after {attempts} tr{'y' if attempts == 1 else 'ies'}"
        await asyncio.to_thread(_log_line, execution, note)
        if status not in expect:
            want = ", ".join(str(s) for s in sorted(expect)) if len(expect) < 8 else "a 2xx status"
            return Outcome(ResultStatus.FAILED, status, error=f"{shown} answered HTTP {status}, expected {want}")
        return Outcome(ResultStatus.SUCCEEDED, 0)

    async def _with_retries(
        self, method: str, url: str, headers: Mapping[str, str], options: Mapping[str, Any], body_path: Path | None,
        target: Path, expect: frozenset[int], retries: int, backoff: float, execution: Execution,
    ) -> tuple[int, int]:  # fmt: skip
        attempt = 0
        while True:
            attempt += 1
            try:
                status = await self._request(method, url, headers, options, body_path, target, execution)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                reason = f"connection failed: {exc}"
                status = None
            if status is not None and (status < 500 or status in expect):
                return status, attempt
            if status is not None:
                reason = f"server error HTTP {status}"
            if attempt > retries:
                raise _Retryable(reason)
            delay = min(self._max_backoff, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.info("http task %s/%s: %s; retrying in %.1f s", execution.assignment.run, execution.assignment.task,
                     reason, delay)  # fmt: skip
            await asyncio.sleep(delay)

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], options: Mapping[str, Any], body_path: Path | None,
        target: Path, execution: Execution,
    ) -> int:  # fmt: skip
        kwargs: dict[str, Any] = {"headers": dict(headers), "allow_redirects": True}
        if "json" in options:
            kwargs["json"] = options["json"]
        elif "body_text" in options:
            kwargs["data"] = str(options["body_text"]).encode()
        body = await asyncio.to_thread(body_path.open, "rb") if body_path is not None else None
        if body is not None:
            kwargs["data"] = body  # streamed by aiohttp, reopened for every try
        try:
            return await self._exchange(method, url, kwargs, target, execution)
        finally:
            if body is not None:
                body.close()

    async def _exchange(self, method: str, url: str, kwargs: dict[str, Any], target: Path, execution: Execution) -> int:
        async with self._client().request(method, url, **kwargs) as response:
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            out = await asyncio.to_thread(part.open, "wb")
            size = 0
            try:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    await asyncio.to_thread(out.write, chunk)
                    size += len(chunk)
            finally:
                out.close()
            await asyncio.to_thread(part.replace, target)
            doc = {"status": response.status, "reason": response.reason, "bytes": size,
                   "headers": {k: v for k, v in response.headers.items() if k.lower() != "set-cookie"}}  # fmt: skip
            await asyncio.to_thread(_save, execution.stdout.parent / "response.json", doc)
            return response.status

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _expect(value: Any) -> frozenset[int]:
    if value is None:
        return frozenset(range(200, 300))
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in items)
    ):
        raise OptionError(f"http option 'expect' must be a status or a list of statuses (100-599), got {value!r}")
    return frozenset(items)


def _log_line(execution: Execution, line: str) -> None:
    with execution.stdout.open("a") as f:
        f.write(line + "\n")
