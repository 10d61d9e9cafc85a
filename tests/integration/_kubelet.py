"""A stand-in kubelet for the kmock Kubernetes API emulator.

kmock stores pods but schedules nothing. This helper watches the emulator for
new pods and runs each pod's container command for real, as a local process in
the pod's ``workingDir`` with the pod's env (plus this machine's ``PATH``, as an
image would provide one) — so files staged by the agent are really read and
written. It then patches the pod status the way a kubelet reports it (Running,
then Succeeded/Failed with ``state.terminated.exitCode``), serves the merged
stdout+stderr on ``pods/NAME/log`` (kmock does not emulate that endpoint), and
kills the process when the pod is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from types import TracebackType
from typing import Any

import kmock


class Kubelet:
    def __init__(self, emu: kmock.KubernetesEmulator, srv: kmock.Server) -> None:
        self.emu = emu
        self.srv = srv
        self.pods: dict[str, dict[str, Any]] = {}  # name -> pod as created
        self.logs: dict[str, bytes] = {}
        self.running: dict[str, asyncio.subprocess.Process] = {}
        self.killed: set[str] = set()
        self.deleted: set[str] = set()
        self.started = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Kubelet:
        async def serve_log(request: kmock.Request) -> bytes:
            return self.logs.get(request.name or "", b"")

        self.emu["get", kmock.subresource("log")] << serve_log
        ready = asyncio.Event()
        self._loop = asyncio.create_task(self._watch(ready))
        await ready.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._loop is not None
        self._loop.cancel()
        for proc in self.running.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        # Let each run read its pipes to the end (closing them) rather than cancelling it mid-way.
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=10)
            for task in late:
                task.cancel()
        await asyncio.gather(self._loop, *self._tasks, return_exceptions=True)

    async def _watch(self, ready: asyncio.Event) -> None:
        async with self.srv.client.get("/api/v1/pods", params={"watch": "true"}) as resp:
            ready.set()
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                pod = event["object"]
                name = pod["metadata"]["name"]
                if event["type"] == "ADDED" and name not in self.pods:
                    self.pods[name] = pod
                    task = asyncio.create_task(self._run(pod))
                    self._tasks.add(task)
                elif event["type"] == "DELETED":
                    self.deleted.add(name)
                    if (proc := self.running.get(name)) is not None and proc.returncode is None:
                        self.killed.add(name)
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)

    async def _status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta["name"] in self.deleted:
            return
        url = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        async with self.srv.client.patch(
            url, data=json.dumps({"status": status}), headers={"Content-Type": "application/merge-patch+json"}
        ) as resp:
            resp.raise_for_status()

    async def _run(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", ())}
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        proc = await asyncio.create_subprocess_exec(
            *container["command"],
            cwd=container["workingDir"],
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = proc
        # The fields a kubelet always reports for a container (clients validate them).
        base = {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                "restartCount": 0}  # fmt: skip
        running = {**base, "ready": True, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
        await self._status(pod, {"phase": "Running", "containerStatuses": [running]})
        self.started.set()
        out, _ = await proc.communicate()
        self.logs[name] = out
        code = proc.returncode
        assert code is not None
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
        await self._status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [{**base, "state": {"terminated": terminated}}],
            },
        )
