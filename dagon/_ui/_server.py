"""The dashboard's HTTP server (aiohttp), run inside the coordinator's process.

Every route — pages, static files, the JSON API and the event stream, and unknown paths —
answers 401 without the token: ``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` once
(the server then sets an HttpOnly, SameSite=Strict cookie holding a value derived from the
token and redirects to the same URL without it, so the token stays out of history and
referrers), or that cookie. Pages are read-only; cancel and resume exist only with
``allow_control``, and need a custom request header that no cross-site form can send.

Everything the browser loads ships in this package (``static/``): no CDN, no build step.
A strict Content-Security-Policy allows scripts and styles from the server itself only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import ssl
import time
import urllib.parse
from importlib import resources
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from aiohttp import web

from dagon._ui._feed import Page, UiFeed
from dagon._ui._logs import task_log
from dagon._ui._token import cookie_value, token_matches
from dagon.core import RunNotFound, RunState, ValidationError
from dagon.protocol import ConfigError, RunId
from dagon.protocol._version import __version__

if TYPE_CHECKING:
    from dagon.core import Coordinator

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

COOKIE: Final = "dagon_ui"
KEEPALIVE: Final = 15.0  # seconds between comment lines on an idle event stream
_STATIC: Final = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "dag.js": "text/javascript",
    "gantt.js": "text/javascript",
    "pages.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_UNAUTHORIZED: Final = (
    "401: this dashboard needs its token. Open the URL the coordinator printed at start (…/?token=…),"
    " or send 'Authorization: Bearer TOKEN'; the token is in $DAGON_HOME/ui-token on the coordinator's machine.\n"
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The live web dashboard of one coordinator (an async context manager).

    Args:
        coordinator: the coordinator to show; the dashboard registers a listener on it.
        token: the access token (see :func:`dagon._ui.load_or_create_token`).
        host: address to listen on (loopback by default; anything else is logged as a warning).
        port: TCP port (0: any free one; see :attr:`port`).
        allow_control: offer cancel and resume (off: the dashboard is read-only).
        tls: serve HTTPS with this server context.

    Raises:
        ConfigError: the address cannot be bound (from ``__aenter__``).
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_control: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--ui-port {port} is not a TCP port (1-65535, or 0 for any free one)")
        if len(token) < 32:
            raise ConfigError("the dashboard token must be at least 32 characters (see $DAGON_HOME/ui-token)")
        self.coordinator = coordinator
        self.host = host
        self.port = port
        self.allow_control = allow_control
        self._token = token
        self._cookie = cookie_value(token)
        self._tls = tls
        self.feed = UiFeed(coordinator)
        self._runner: web.AppRunner | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self._static = {name: (resources.files("dagon._ui") / "static" / name).read_bytes() for name in _STATIC}
        self._page = (resources.files("dagon._ui") / "static" / "app.html").read_bytes()

    @property
    def url(self) -> str:
        """The dashboard's address (without the token)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}/"

    @property
    def login_url(self) -> str:
        """The address with ``?token=`` — what to print for the person starting the coordinator."""
        return f"{self.url}?token={urllib.parse.quote(self._token)}"

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._security, self._auth], client_max_size=64 * 1024)
        r = app.router
        for path in ("/", "/agents", "/runs/{run}", "/runs/{run}/tasks/{task}"):
            r.add_get(path, self._html)
        r.add_get("/static/{name}", self._static_file)
        r.add_get("/api/info", self._info)
        r.add_get("/api/runs", self._api_runs)
        r.add_get("/api/runs/{run}", self._api_run)
        r.add_get("/api/runs/{run}/tasks/{task}", self._api_task)
        r.add_get("/api/runs/{run}/tasks/{task}/log/{stream}", self._api_log)
        r.add_get("/api/agents", self._api_agents)
        r.add_get("/api/stream", self._stream)
        r.add_post("/api/runs/{run}/cancel", self._cancel)
        r.add_post("/api/runs/{run}/resume", self._resume)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._tls)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"cannot serve the dashboard on {self.host}:{self.port}: {exc}; choose another --ui-port"
            ) from exc
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        if not _is_loopback(self.host):
            log.warning(
                "the dashboard listens on %s, beyond this machine: anyone who can reach it and read the token sees"
                " every run%s",
                self.host, "" if self._tls else "; without TLS the token crosses the network in clear",
            )  # fmt: skip
        self.coordinator.add_listener(self.feed)
        self._feed_task = asyncio.get_running_loop().create_task(self.feed.flush_loop(), name="dashboard-feed")
        log.info("dashboard on %s (%s)", self.url, "control allowed" if self.allow_control else "read-only")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(ValueError):
            self.coordinator.listeners.remove(self.feed)
        tasks = [t for t in (self._feed_task, *self._streams) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._runner is not None:
            await self._runner.cleanup()

    # -- middlewares -------------------------------------------------------------

    @web.middleware
    async def _security(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            for key, value in _HEADERS.items():
                exc.headers.setdefault(key, value)
            raise
        if not response.prepared:
            for key, value in _HEADERS.items():
                response.headers.setdefault(key, value)
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and token_matches(self._token, header[7:].strip()):
            return await handler(request)  # type: ignore[no-any-return]
        offered = request.query.get("token")
        if offered is not None:
            if not token_matches(self._token, offered):
                return self._unauthorized()
            query = [(k, v) for k, v in request.query.items() if k != "token"]
            if request.method == "GET" and not request.path.startswith("/api/"):
                target = request.path + (f"?{urllib.parse.urlencode(query)}" if query else "")
                response = web.Response(status=303, headers={"Location": target})
                self._set_cookie(response)
                return response
            return await handler(request)  # type: ignore[no-any-return]
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and token_matches(self._cookie, cookie):
            return await handler(request)  # type: ignore[no-any-return]
        return self._unauthorized()

    def _set_cookie(self, response: web.StreamResponse) -> None:
        response.set_cookie(
            COOKIE, self._cookie, path="/", httponly=True, samesite="Strict", secure=self._tls is not None,
            max_age=7 * 24 * 3600,
        )  # fmt: skip

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.Response(
            status=401, text=_UNAUTHORIZED, headers={"WWW-Authenticate": 'Bearer realm="dagon dashboard"'}
        )

    # -- pages and files -----------------------------------------------------------

    async def _html(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound(text=f"no file {name!r} here\n")
        return web.Response(body=self._static[name], content_type=_STATIC[name])

    # -- JSON API ------------------------------------------------------------------

    @staticmethod
    def _json(doc: object, status: int = 200) -> web.Response:
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str)
        return web.Response(text=body, status=status, content_type="application/json")

    async def _info(self, request: web.Request) -> web.Response:
        return self._json({"coordinator": self.coordinator.id, "version": __version__, "control": self.allow_control})

    async def _api_runs(self, request: web.Request) -> web.Response:
        runs = await self.feed.runs()
        state = request.query.get("state")
        if state:
            runs = [r for r in runs if r["state"] == state]
        return self._json({"runs": runs, "now": time.time()})

    async def _api_run(self, request: web.Request) -> web.Response:
        run = request.match_info["run"]
        doc = await self.feed.run_snapshot(run)
        if doc is None:
            raise web.HTTPNotFound(text=f"no run {run!r} on this coordinator or in its store\n")
        return self._json(doc)

    async def _api_task(self, request: web.Request) -> web.Response:
        run, task = request.match_info["run"], request.match_info["task"]
        doc = await self.feed.task(run, task)
        if doc is None:
            raise web.HTTPNotFound(text=f"no task {task!r} in run {run!r}\n")
        return self._json(doc)

    async def _api_log(self, request: web.Request) -> web.Response:
        """A task attempt's captured stdout or stderr, as ``dagon logs`` prints it (the last
        ``LOG_LIMIT`` bytes of a longer one; ``X-Dagon-Log`` says ``full`` or ``tail``)."""
        return await task_log(self.coordinator, request)

    async def _api_agents(self, request: web.Request) -> web.Response:
        return self._json(self.feed.agents())

    # -- the event stream ------------------------------------------------------------

    async def _snapshot(self, page: Page) -> dict[str, Any] | None:
        if page.kind == "run":
            assert page.run is not None
            return await self.feed.run_snapshot(page.run)
        if page.kind == "agents":
            return self.feed.agents()
        return {"runs": await self.feed.runs(), "now": time.time()}

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        kind = request.query.get("page", "runs")
        run = request.query.get("run") if kind == "run" else None
        if kind not in ("runs", "agents", "run") or (kind == "run" and not run):
            raise web.HTTPBadRequest(text="use /api/stream?page=runs, ?page=agents or ?page=run&run=RUN\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        for key, value in _HEADERS.items():
            response.headers.setdefault(key, value)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            with self.feed.page(kind, run) as page:
                snapshot = await self._snapshot(page)  # after registering: no change falls between
                await response.prepare(request)
                if snapshot is None:
                    await response.write(b"event: gone\ndata: {}\n\n")
                    return response
                body = json.dumps(snapshot, separators=(",", ":"), allow_nan=False, default=str)
                await response.write(f"retry: 2000\nevent: snapshot\ndata: {body}\n\n".encode())
                while not page.stale:
                    try:
                        async with asyncio.timeout(KEEPALIVE):
                            event, data = await page.queue.get()
                    except TimeoutError:
                        await response.write(b": keepalive\n\n")
                        continue
                    await response.write(f"event: {event}\ndata: {data}\n\n".encode())
                if page.stale:
                    await response.write(b"event: resync\ndata: {}\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(task)
        return response

    # -- control -----------------------------------------------------------------------

    def _check_control(self, request: web.Request) -> None:
        if not self.allow_control:
            raise web.HTTPForbidden(
                text="this dashboard is read-only: restart with --ui-allow-control to cancel or resume\n"
            )
        if request.headers.get("X-Dagon-Control") != "1":
            raise web.HTTPForbidden(text="control requests need the header 'X-Dagon-Control: 1'\n")
        origin = request.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="cross-origin control request refused\n")

    async def _cancel(self, request: web.Request) -> web.Response:
        self._check_control(request)
        run = RunId(request.match_info["run"])
        view = self.coordinator.engine.runs.get(run)
        if view is None or view.state is not RunState.RUNNING:
            raise web.HTTPConflict(text=f"run {run!r} is not running here\n")
        try:
            await self.coordinator.cancel(run, "cancelled from the dashboard")
        except RunNotFound:
            raise web.HTTPNotFound(text=f"no run {run!r}\n") from None
        log.warning("run %s cancelled from the dashboard (%s)", run, request.remote)
        return self._json({"run": run, "cancelled": True})

    async def _resume(self, request: web.Request) -> web.Response:
        self._check_control(request)
        run = RunId(request.match_info["run"])
        try:
            await self.coordinator.resume(run)
        except RunNotFound:
            raise web.HTTPNotFound(text=f"no run {run!r} in the run store\n") from None
        except ValidationError as exc:
            raise web.HTTPConflict(text=f"{exc}\n") from None
        log.warning("run %s resumed from the dashboard (%s)", run, request.remote)
        return self._json({"run": run, "resumed": True})
