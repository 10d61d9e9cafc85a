"""A fake Nomad (server + one client node) implementing the HTTP API endpoints dagon uses.

Nomad cannot be installed here. This follows Nomad's documented HTTP API
(developer.hashicorp.com/nomad/api-docs: jobs, client, blocking queries, ACLs)
for exactly these endpoints and fields:

- ``POST``/``PUT /v1/jobs`` — register a job (``{"Job": …}``), validated for the
  fields the docs mark required; answers ``EvalID``, ``EvalCreateIndex``,
  ``JobModifyIndex``.
- ``GET /v1/job/:id/allocations`` — blocking query: with ``index=N`` it hangs
  until the job's allocations change past N or ``wait`` (default 5m) elapses;
  ``X-Nomad-Index`` on every answer.
- ``GET /v1/client/fs/logs/:alloc_id?task=&type=stdout|stderr&plain=true``.
- ``DELETE /v1/job/:id?purge=true`` — stops the allocation (kill signal, then
  SIGKILL after ``KillTimeout``) and removes the job.
- ``X-Nomad-Token`` checked when an ACL token is configured (403 otherwise).
- HTTPS with client-certificate verification when given an SSL context.

Every driver's task runs for real as a local process (``Config.command`` +
``Config.args``; ``work_dir`` for docker) with the task's ``Env`` plus this
machine's ``PATH`` — no containers, no isolation, no host volumes (the scratch
path is simply the same on this single machine). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float


@dataclass
class FakeAlloc:
    id: str
    job_id: str
    create_index: int
    modify_index: int
    client_status: str = "pending"
    state: str = "pending"
    failed: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    stdout: bytes = b""
    stderr: bytes = b""
    proc: asyncio.subprocess.Process | None = None

    def stub(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "EvalID": str(uuid.uuid4()),
            "Name": f"{self.job_id}.task[0]",
            "NodeID": "fake-node",
            "JobID": self.job_id,
            "TaskGroup": "task",
            "DesiredStatus": "run",
            "ClientStatus": self.client_status,
            "TaskStates": {"task": {"State": self.state, "Failed": self.failed, "Events": list(self.events)}},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not match:
        raise web.HTTPBadRequest(text=f"invalid wait time {text!r}")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


class FakeNomad:
    def __init__(self, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.token = token
        self.ssl_context = ssl_context
        self.requests: list[Recorded] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.allocs: dict[str, FakeAlloc] = {}
        self.purged: list[str] = []
        self.started = asyncio.Event()
        self.index = 1
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeNomad:
        app = web.Application(middlewares=[self._record])
        app.router.add_route("POST", "/v1/jobs", self._register)
        app.router.add_route("PUT", "/v1/jobs", self._register)
        app.router.add_get("/v1/job/{id}/allocations", self._allocations)
        app.router.add_delete("/v1/job/{id}", self._deregister)
        app.router.add_get("/v1/client/fs/logs/{alloc}", self._logs)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for alloc in self.allocs.values():
            if alloc.proc is not None and alloc.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(alloc.proc.pid, signal.SIGKILL)
        # Let each task read its pipes to the end (closing them) rather than cancelling it mid-way.
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=10)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._runner is not None
        await self._runner.cleanup()

    def of(self, method: str, pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), dict(request.headers), time.monotonic())
        )
        if self.token is not None and request.headers.get("X-Nomad-Token") != self.token:
            return web.Response(status=403, text="Permission denied")
        return await handler(request)  # type: ignore[no-any-return]

    async def _bump(self, alloc: FakeAlloc) -> None:
        async with self._changed:
            self.index += 1
            alloc.modify_index = self.index
            self._changed.notify_all()

    # -- endpoints --------------------------------------------------------------------------

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        job = body.get("Job") if isinstance(body, dict) else None
        problems = []
        if not isinstance(job, dict):
            return web.Response(status=400, text="Job must be specified")
        if not job.get("ID"):
            problems.append("Missing job ID")
        if not job.get("Datacenters"):
            problems.append("Missing job datacenters")
        if job.get("Type") not in ("service", "batch", "system", "sysbatch"):
            problems.append(f"Invalid job type {job.get('Type')!r}")
        groups = job.get("TaskGroups") or []
        if len(groups) != 1 or len(groups[0].get("Tasks") or []) != 1:
            problems.append("this fake runs exactly one task group with one task")
        else:
            task = groups[0]["Tasks"][0]
            if not task.get("Name") or not task.get("Driver"):
                problems.append("Task must have a name and a driver")
            resources = task.get("Resources") or {}
            if resources.get("CPU", 100) < 1 or resources.get("MemoryMB", 300) < 10:
                problems.append("minimum CPU value is 1; minimum MemoryMB value is 10")
        if problems:
            return web.Response(status=400, text="; ".join(problems))
        job_id = job["ID"]
        self.jobs[job_id] = job
        async with self._changed:
            self.index += 1
            alloc = FakeAlloc(str(uuid.uuid4()), job_id, self.index, self.index)
            alloc.events.append({"Type": "Received", "Time": time.time_ns(), "ExitCode": 0, "Signal": 0})
            self.allocs[alloc.id] = alloc
            self._changed.notify_all()
        task = asyncio.create_task(self._client(alloc, groups[0]["Tasks"][0]))
        self._tasks.add(task)
        return web.json_response(
            {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": self.index, "JobModifyIndex": self.index, "Warnings": ""}
        )

    def _job_index(self, job_id: str) -> int:
        return max((a.modify_index for a in self.allocs.values() if a.job_id == job_id), default=self.index)

    async def _allocations(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        min_index = int(request.query.get("index", "0") or 0)
        wait = _duration(request.query.get("wait", "5m"))
        if min_index > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, 600)), self._changed:
                    await self._changed.wait_for(lambda: self._job_index(job_id) > min_index)
        stubs = [a.stub() for a in self.allocs.values() if a.job_id == job_id and job_id in self.jobs]
        return web.json_response(stubs, headers={"X-Nomad-Index": str(self._job_index(job_id))})

    async def _deregister(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id not in self.jobs:
            return web.Response(status=404, text="job not found")
        job = self.jobs[job_id]
        kill_timeout = job["TaskGroups"][0]["Tasks"][0].get("KillTimeout", 5_000_000_000) / 1e9
        # As in Nomad, the answer does not wait for the allocation to stop: the client kills it
        # afterwards (the kill signal, then SIGKILL once KillTimeout has passed).
        for alloc in [a for a in self.allocs.values() if a.job_id == job_id]:
            if alloc.proc is not None and alloc.proc.returncode is None:
                task = asyncio.create_task(self._kill(alloc, kill_timeout))
                self._tasks.add(task)
        if request.query.get("purge") == "true":
            del self.jobs[job_id]
            self.purged.append(job_id)
        return web.json_response(
            {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": self.index, "JobModifyIndex": self.index}
        )

    async def _kill(self, alloc: FakeAlloc, kill_timeout: float) -> None:
        assert alloc.proc is not None
        alloc.events.append({"Type": "Killing", "Time": time.time_ns(), "ExitCode": 0, "Signal": 0})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(alloc.proc.pid, signal.SIGINT)  # Nomad's default kill signal
        try:
            await asyncio.wait_for(asyncio.shield(alloc.proc.wait()), kill_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(alloc.proc.pid, signal.SIGKILL)

    async def stopped(self, alloc: FakeAlloc, within: float = 10.0) -> bool:
        """True once the allocation's process has exited (waiting up to ``within`` seconds)."""
        assert alloc.proc is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(alloc.proc.wait()), within)
        return alloc.proc.returncode is not None

    async def _logs(self, request: web.Request) -> web.Response:
        alloc = self.allocs.get(request.match_info["alloc"])
        if alloc is None:
            return web.Response(status=404, text="unknown allocation")
        if request.query.get("task") != "task" or request.query.get("type") not in ("stdout", "stderr"):
            return web.Response(status=400, text="task and type=stdout|stderr are required")
        if request.query.get("plain") != "true":
            return web.Response(status=400, text="this fake serves plain=true only")
        data = alloc.stdout if request.query["type"] == "stdout" else alloc.stderr
        return web.Response(body=data, content_type="text/plain")

    # -- the "client node" ------------------------------------------------------------------

    async def _client(self, alloc: FakeAlloc, task: dict[str, Any]) -> None:
        config = task["Config"]
        argv = [config["command"], *config.get("args", [])]
        env = dict(task.get("Env") or {})
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        alloc.events.append({"Type": "Task Setup", "Time": time.time_ns(), "ExitCode": 0, "Signal": 0})
        alloc.proc = await asyncio.create_subprocess_exec(
            *argv, cwd=config.get("work_dir") or "/", env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        alloc.client_status, alloc.state = "running", "running"
        alloc.events.append({"Type": "Started", "Time": time.time_ns(), "ExitCode": 0, "Signal": 0})
        await self._bump(alloc)
        self.started.set()
        alloc.stdout, alloc.stderr = await alloc.proc.communicate()
        code = alloc.proc.returncode
        assert code is not None
        sig = -code if code < 0 else 0
        alloc.events.append(
            {"Type": "Terminated", "Time": time.time_ns(), "ExitCode": 0 if sig else code, "Signal": sig}
        )
        alloc.state = "dead"
        alloc.failed = code != 0
        alloc.client_status = "failed" if code != 0 else "complete"
        await self._bump(alloc)
