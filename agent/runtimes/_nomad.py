"""The Nomad runtime: one batch job per attempt, through Nomad's HTTP API (aiohttp).

Each attempt registers a ``batch`` job (``POST /v1/jobs``) with one task group
holding one task — driver ``docker``, ``exec`` or ``raw_exec`` — that runs
``/bin/sh -c COMMAND`` in the task's scratch directory. Restarts and
reschedules are disabled: dagon owns retries. The scratch root is visible in
the task at the same absolute path: through a Nomad *host volume* (the client
config declares ``host_volume "<scratch_volume>" { path = "<scratch root>" }``)
for ``exec`` and ``docker``, a docker bind mount when no host volume is
configured, and directly for ``raw_exec`` (no isolation).

The allocation is followed with blocking queries on
``/v1/job/:id/allocations?index=N&wait=…`` (``X-Nomad-Index``), never polled.
The exit code is the ``ExitCode`` of the task's ``Terminated`` event. stdout and
stderr come from ``/v1/client/fs/logs/:alloc_id?plain=true``. The job is
deregistered and purged (``DELETE /v1/job/:id?purge=true``) when the attempt
ends, times out or is cancelled.

Nomad interpolates ``${…}`` in task environment values; a value that must
contain that sequence literally cannot be passed through ``env``.

Task options (``runtime_options``): ``driver`` (docker, exec, raw_exec; default
docker), ``image`` (required for docker), ``datacenters``, ``namespace``,
``privileged``, ``devices``, ``network_mode`` (docker), ``cpu_mhz`` (overrides
cpus x the runtime's MHz per CPU).
"""

from __future__ import annotations

import asyncio
import logging
import math
import shlex
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final
from urllib.parse import quote

import aiohttp

from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._jobs import OptionError, Options, backoff, object_name, read_tail, run_cleanup, within
from dagon.protocol import ResultStatus

__all__ = ["NomadRuntime"]

log = logging.getLogger(__name__)

TASK: Final = "task"
DRIVERS: Final = ("docker", "exec", "raw_exec")
_OPTIONS: Final = frozenset(
    {"driver", "image", "datacenters", "namespace", "privileged", "devices", "network_mode", "cpu_mhz"}
)
_TERMINAL: Final = frozenset({"complete", "failed", "lost"})
_SETUP_FAILURES: Final = ("Driver Failure", "Setup Failure", "Failed Validation", "Failed Artifact Download")
_CHUNK: Final = 64 * 1024


class NomadError(Exception):
    """Nomad answered with an error status; the message carries it (never the token)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _End:
    status: ResultStatus
    exit_code: int | None
    error: str = ""


class NomadRuntime(Runtime):
    """Runs each attempt as a Nomad batch job.

    Args:
        scratch: the agent's scratch root (made visible to every task at the same path).
        address: Nomad HTTP API address (``http://127.0.0.1:4646`` is Nomad's default).
        token: ACL token sent as ``X-Nomad-Token`` (never logged).
        namespace, region: Nomad namespace and region (``None``: the server's defaults).
        datacenters: where jobs may run (a task's ``datacenters`` option wins).
        node: pin jobs to the Nomad client with this node name (the agent's own node,
            where its scratch directory is); ``None`` for a scratch shared by all nodes.
        scratch_volume: name of the client host volume that holds the scratch root;
            ``None`` uses a docker bind mount instead (docker driver only).
        ca_file, client_cert, client_key: TLS material for ``https://`` addresses.
        mhz_per_cpu: MHz requested per CPU of the task's ``cpus``.
        wait: seconds one blocking query may hang before it is repeated.
        kill_timeout: seconds Nomad waits between the kill signal and SIGKILL.
    """

    name: ClassVar[str] = "nomad"

    def __init__(
        self,
        *,
        scratch: Path,
        address: str = "http://127.0.0.1:4646",
        token: str | None = None,
        namespace: str | None = None,
        region: str | None = None,
        datacenters: Sequence[str] = ("dc1",),
        node: str | None = None,
        scratch_volume: str | None = "dagon-scratch",
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        mhz_per_cpu: int = 1000,
        wait: float = 60.0,
        kill_timeout: float = 5.0,
    ) -> None:
        if not address.startswith(("http://", "https://")):
            raise ValueError(f"Nomad address must start with http:// or https://, got {address!r}")
        if not datacenters:
            raise ValueError("give at least one Nomad datacenter")
        if not 1 <= wait <= 600:
            raise ValueError(f"wait must be between 1 and 600 seconds (Nomad's limit is 10 minutes), got {wait}")
        if (client_cert is None) != (client_key is None):
            raise ValueError("give both client_cert and client_key for TLS client authentication, or neither")
        self._scratch = Path(scratch).absolute()
        self._address = address.rstrip("/")
        self._token = token or None
        self._namespace = namespace
        self._region = region
        self._datacenters = list(datacenters)
        self._node = node or None
        self._scratch_volume = scratch_volume or None
        self._tls = (ca_file, client_cert, client_key)
        self._mhz_per_cpu = mhz_per_cpu
        self._block = wait
        self._kill_timeout = kill_timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # the token stays out of reprs and logs
        return f"NomadRuntime(address={self._address!r}, token={'set' if self._token else 'unset'})"

    # -- HTTP -------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | None:
        ca, cert, key = self._tls
        if not self._address.startswith("https://"):
            return None
        context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
        return context

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"X-Nomad-Token": self._token} if self._token else {}
            context = await asyncio.to_thread(self._ssl)
            connector = aiohttp.TCPConnector(ssl=context) if context is not None else aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        return self._session

    def _params(self, extra: Mapping[str, str] | None = None, namespace: str | None = None) -> dict[str, str]:
        params = dict(extra or {})
        if namespace or self._namespace:
            params["namespace"] = namespace or self._namespace or ""
        if self._region:
            params["region"] = self._region
        return params

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str],
        json: Any = None,
        seconds: float = 30.0,
    ) -> tuple[Any, Mapping[str, str]]:
        session = await self._http()
        async with session.request(
            method, self._address + path, params=params, json=json, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as resp:
            if resp.status >= 400:
                text = (await resp.text())[:500].strip()
                raise NomadError(f"{method} {path}: {resp.status} {resp.reason}: {text}", status=resp.status)
            return await resp.json(content_type=None), resp.headers

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one attempt ------------------------------------------------------------------------

    async def run(self, execution: Execution) -> Outcome:
        a = execution.assignment
        try:
            opts = Options("nomad", a.runtime_options, _OPTIONS)
            namespace = opts.text("namespace")
            job = self._job(execution, opts)
        except OptionError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        job_id = job["ID"]
        path = f"/v1/job/{quote(job_id, safe='')}"
        registered = sent = False  # sent: the job may exist even if the answer never came
        alloc: dict[str, Any] = {}
        try:
            async with asyncio.timeout(a.timeout):
                sent = True
                await self._request("POST", "/v1/jobs", params=self._params(namespace=namespace), json={"Job": job})
                registered = True
                log.info("task %s/%s attempt %d: Nomad job %s registered", a.run, a.task, a.attempt, job_id)
                end = await self._wait(path, namespace, alloc)
        except TimeoutError:
            end = _End(ResultStatus.TIMEOUT, None, f"Nomad job {job_id} purged after the {a.timeout:g} s timeout")
            if sent and not registered:
                await run_cleanup(lambda: self._purge(path, namespace))
        except asyncio.CancelledError:
            if sent:
                await run_cleanup(lambda: self._purge(path, namespace))
            raise
        except NomadError as exc:
            end = _End(ResultStatus.ERROR, None, f"Nomad refused job {job_id}: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            end = _End(ResultStatus.ERROR, None, f"cannot reach Nomad at {self._address}: {type(exc).__name__}: {exc}")
        if registered:
            await run_cleanup(lambda: self._finish(path, namespace, alloc.get("ID"), execution))
        tail = await asyncio.to_thread(read_tail, execution.stderr) if end.status is not ResultStatus.SUCCEEDED else ""
        return Outcome(end.status, end.exit_code, error=end.error, stderr_tail=tail)

    async def _wait(self, path: str, namespace: str | None, alloc: dict[str, Any]) -> _End:
        """Blocking queries on the job's allocations until its allocation is terminal."""
        index = stalled = 0
        while True:
            params = {"index": str(index), "wait": f"{self._block:g}s"} if index else {}
            # Nomad may add up to wait/16 to the wait; leave room before giving up on the socket.
            allocs, headers = await self._request(
                "GET", f"{path}/allocations", params=self._params(params, namespace), seconds=self._block * 1.1 + 15
            )
            new = int(headers.get("X-Nomad-Index", "0") or 0)
            # Nomad's advice: an index that goes backwards resets the query; one that stays put
            # means nothing changed (the wait elapsed) — pause briefly before asking again.
            stalled = stalled + 1 if new == index else 0
            index = new if new > index else (0 if new < index else index)
            if stalled:
                await asyncio.sleep(backoff(stalled))
            if not allocs:
                continue
            latest = max(allocs, key=lambda x: x.get("CreateIndex", 0))
            alloc.clear()
            alloc.update(latest)
            if (end := _ended(latest)) is not None:
                return end

    async def _finish(self, path: str, namespace: str | None, alloc_id: str | None, execution: Execution) -> None:
        """Logs into the stdout/stderr files (best effort), then purge the job."""
        if alloc_id:
            for kind, target in (("stdout", execution.stdout), ("stderr", execution.stderr)):
                try:
                    await self._logs(alloc_id, kind, target, namespace)
                except (NomadError, aiohttp.ClientError, OSError) as exc:
                    log.warning("Nomad %s log of allocation %s could not be read: %s", kind, alloc_id, exc)
        await self._purge(path, namespace)

    async def _logs(self, alloc_id: str, kind: str, target: Path, namespace: str | None) -> None:
        session = await self._http()
        params = self._params(
            {"task": TASK, "type": kind, "plain": "true", "origin": "start", "offset": "0", "follow": "false"},
            namespace,
        )
        url = f"{self._address}/v1/client/fs/logs/{quote(alloc_id, safe='')}"
        async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=300)) as resp:
            if resp.status >= 400:
                text = (await resp.text())[:200]
                raise NomadError(f"logs: {resp.status} {resp.reason}: {text}", status=resp.status)
            out = await asyncio.to_thread(target.open, "ab")
            try:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    await asyncio.to_thread(out.write, chunk)
            finally:
                await asyncio.to_thread(out.close)

    async def _purge(self, path: str, namespace: str | None) -> None:
        try:
            await self._request("DELETE", path, params=self._params({"purge": "true"}, namespace))
            log.info("Nomad job %s purged", path.rsplit("/", 1)[-1])
        except NomadError as exc:
            if exc.status != 404:  # 404: already gone, or never registered
                log.warning("Nomad job %s could not be purged: %s", path.rsplit("/", 1)[-1], exc)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("Nomad job %s could not be purged: %s", path.rsplit("/", 1)[-1], exc)

    # -- the job ----------------------------------------------------------------------------

    def _job(self, execution: Execution, opts: Options) -> dict[str, Any]:
        a = execution.assignment
        driver = opts.text("driver", "docker", choices=DRIVERS) or "docker"
        root = self._scratch if within(execution.workdir, self._scratch) else execution.workdir
        task: dict[str, Any] = {
            "Name": TASK,
            "Driver": driver,
            "Env": dict(execution.env),
            "Resources": {"CPU": self._cpu(a.cpus, opts)},
            "KillTimeout": int(self._kill_timeout * 1e9),
        }
        if a.memory > 0:
            task["Resources"]["MemoryMB"] = max(10, math.ceil(a.memory / 2**20))
        group: dict[str, Any] = {
            "Name": TASK,
            "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail"},  # dagon owns retries
            "ReschedulePolicy": {"Attempts": 0, "Unlimited": False},
            "Tasks": [task],
        }
        host_volume = driver != "raw_exec" and self._scratch_volume is not None
        if host_volume:
            group["Volumes"] = {"scratch": {"Name": "scratch", "Type": "host", "Source": self._scratch_volume}}
            task["VolumeMounts"] = [{"Volume": "scratch", "Destination": str(root), "ReadOnly": False}]
        if driver == "docker":
            config: dict[str, Any] = {
                "image": opts.required("image"),
                "command": "/bin/sh",
                "args": ["-c", execution.command],
                "work_dir": str(execution.workdir),
                "privileged": opts.flag("privileged"),
            }
            if not host_volume:
                config["volumes"] = [f"{root}:{root}"]
            if devices := opts.paths("devices"):
                config["devices"] = [{"host_path": d, "container_path": d} for d in devices]
            if mode := opts.text("network_mode"):
                config["network_mode"] = mode
        else:
            for docker_only in ("image", "privileged", "devices", "network_mode"):
                if docker_only in a.runtime_options:
                    raise OptionError(f"nomad option {docker_only!r} needs driver 'docker', not {driver!r}")
            # exec and raw_exec have no working-directory setting: change into it first.
            script = f"cd {shlex.quote(str(execution.workdir))} || exit 125\n{execution.command}"
            config = {"command": "/bin/sh", "args": ["-c", script]}
        task["Config"] = config
        datacenters = a.runtime_options.get("datacenters", self._datacenters)
        if (
            not isinstance(datacenters, list | tuple)
            or not datacenters
            or not all(isinstance(d, str) for d in datacenters)
        ):
            raise OptionError(f"nomad option 'datacenters' must be a non-empty list of names, got {datacenters!r}")
        job_id = object_name("dagon", a.run, a.task, a.attempt, limit=128)
        job: dict[str, Any] = {
            "ID": job_id,
            "Name": job_id,
            "Type": "batch",
            "Datacenters": list(datacenters),
            "Meta": {"dagon_run": a.run, "dagon_task": a.task, "dagon_attempt": str(a.attempt)},
            "TaskGroups": [group],
        }
        if self._region:
            job["Region"] = self._region
        if namespace := opts.text("namespace") or self._namespace:
            job["Namespace"] = namespace
        if self._node:
            job["Constraints"] = [{"LTarget": "${node.unique.name}", "RTarget": self._node, "Operand": "="}]
        return job

    def _cpu(self, cpus: float, opts: Options) -> int:
        mhz = opts.integer("cpu_mhz", minimum=1)
        return mhz if mhz is not None else max(1, round(cpus * self._mhz_per_cpu))


def _ended(alloc: Mapping[str, Any]) -> _End | None:
    """How the allocation ended, or ``None`` while it is pending or running."""
    state = (alloc.get("TaskStates") or {}).get(TASK) or {}
    client_status = alloc.get("ClientStatus", "")
    if state.get("State") != "dead" and client_status not in _TERMINAL:
        return None
    events = state.get("Events") or []
    terminated = [e for e in events if e.get("Type") == "Terminated"]
    if terminated:
        last = terminated[-1]
        code, sig = int(last.get("ExitCode") or 0), int(last.get("Signal") or 0)
        if sig:  # killed by a signal: reported like the process runtime does, 128 + N
            return _End(ResultStatus.FAILED, 128 + sig, f"task killed by signal {sig}")
        if code == 0:
            return _End(ResultStatus.SUCCEEDED, 0)
        return _End(ResultStatus.FAILED, code, f"task exited with {code}")
    for event in reversed(events):
        if event.get("Type") in _SETUP_FAILURES:
            detail = event.get("DriverError") or event.get("SetupError") or event.get("DisplayMessage") or ""
            return _End(ResultStatus.ERROR, None, f"Nomad could not start the task: {event['Type']}: {detail}")
    if client_status == "lost":
        return _End(ResultStatus.ERROR, None, "Nomad lost the allocation (its node went away)")
    return _End(ResultStatus.ERROR, None, f"allocation ended as {client_status or 'dead'} without an exit code")
