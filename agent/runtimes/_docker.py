"""The Docker runtime: one container per attempt, through the Docker Engine API (aiodocker).

The task's scratch directory is bind-mounted at the *same* absolute path and is
the container's working directory, so the ``workflow://`` references the agent
rewrote to absolute paths stay valid inside. The container runs the command with
``/bin/sh -c`` (``shell`` option), as the agent's uid:gid unless ``user`` says
otherwise (outputs stay owned by the agent), with no network unless ``network``
says otherwise, and with the task's ``cpus``/``memory`` as hard limits.

Options (``Task.runtime_options``): ``image`` (required), ``pull`` (``never``,
``if-missing`` — the default —, ``always``), ``user``, ``network`` (default
``none``), ``devices`` (``HOST[:CONTAINER[:PERMS]]``), ``volumes``
(``SRC:DST[:ro]``), ``gpus`` (``"all"`` or a count), ``shell``.

Every attempt ends with the container removed: after its exit, on timeout and on
cancellation (removal is shielded from further cancellation).

``reuse: true`` trades isolation for start-up time (many short tasks): the task
runs through ``docker exec`` in a long-lived container that mounts the agent's
whole scratch root at the same path (the runtime must be given ``scratch_root``).
Each container of the pool serves one task at a time; one that a task timed out
or was cancelled in is removed (there is no API to kill an exec'd process), the
others are removed when the runtime closes. Processes a task leaves running in
the background may outlive it in a reused container: reuse is for short,
well-behaved commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._mounts import outside_link_targets
from dagon.agent.runtimes._process import STDERR_TAIL, _finish
from dagon.protocol import ResultStatus

if TYPE_CHECKING:
    import aiodocker

__all__ = ["DEFAULT_DOCKER_URL", "DockerRuntime", "docker_config"]

log = logging.getLogger(__name__)

DEFAULT_DOCKER_URL: Final = "unix:///var/run/docker.sock"
PULL_POLICIES: Final = ("never", "if-missing", "always")
STOP_GRACE: Final = 2
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]")


class DockerError(Exception):
    """An option or the engine refused the container (ends the attempt as ERROR)."""


def _device(spec: str) -> dict[str, str]:
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise DockerError(f"device {spec!r} is not HOST[:CONTAINER[:PERMISSIONS]]")
    host = parts[0]
    inside = parts[1] if len(parts) > 1 and parts[1] else host
    perms = parts[2] if len(parts) > 2 else "rwm"
    return {"PathOnHost": host, "PathInContainer": inside, "CgroupPermissions": perms}


def _gpus(value: Any) -> list[dict[str, Any]]:
    count = -1 if value in ("all", -1) else int(value)
    return [{"Driver": "", "Count": count, "Capabilities": [["gpu"]]}]


def docker_config(execution: Execution, *, uid: int | None = None, gid: int | None = None) -> dict[str, Any]:
    """The Engine API ``ContainerCreate`` body for ``execution`` (pure; no I/O but a directory walk).

    Raises:
        DockerError: an option is malformed (the message names it).
    """
    a = execution.assignment
    opts = a.runtime_options
    workdir = str(execution.workdir)
    binds = [f"{workdir}:{workdir}:rw"]
    binds += [f"{p}:{p}:ro" for p in outside_link_targets(execution.workdir)]
    for volume in opts.get("volumes", ()):
        if ":" not in volume:
            raise DockerError(f"volume {volume!r} is not SRC:DST[:ro]")
        binds.append(volume)
    host: dict[str, Any] = {
        "Binds": binds,
        "NetworkMode": str(opts.get("network", "none")),
        "Devices": [_device(d) for d in opts.get("devices", ())],
        "AutoRemove": False,  # removed by us after the logs were read
    }
    if a.cpus > 0:
        host["NanoCpus"] = int(a.cpus * 1e9)
    if a.memory > 0:
        host["Memory"] = int(a.memory)
        host["MemorySwap"] = int(a.memory)  # no swap beyond the limit
    if "gpus" in opts:
        host["DeviceRequests"] = _gpus(opts["gpus"])
    user = opts.get("user")
    if user is None:
        user = f"{os.getuid() if uid is None else uid}:{os.getgid() if gid is None else gid}"
    return {
        "Image": str(opts["image"]),
        "Entrypoint": [str(opts.get("shell", "/bin/sh")), "-c"],
        "Cmd": [execution.command],
        "WorkingDir": workdir,
        "Env": [f"{k}={v}" for k, v in execution.env.items()],
        "User": str(user),
        "Labels": {"dagon.run": a.run, "dagon.task": a.task, "dagon.attempt": str(a.attempt)},
        "AttachStdout": False,
        "AttachStderr": False,
        "HostConfig": host,
    }


def _reuse_config(config: dict[str, Any], execution: Execution, scratch_root: Path) -> dict[str, Any]:
    """A long-lived container for ``reuse``: the scratch root instead of the task's directory, idling."""
    workdir = str(execution.workdir)
    root = str(scratch_root)
    host = dict(config["HostConfig"])
    host["Binds"] = [f"{root}:{root}:rw", *(b for b in host["Binds"] if not b.startswith(f"{workdir}:"))]
    labels = {"dagon.reuse": "1"}
    return {
        **config,
        "Entrypoint": [config["Entrypoint"][0], "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
        "Cmd": [],
        "WorkingDir": root,
        "Env": [],
        "Labels": labels,
        "HostConfig": host,
    }


def _reuse_key(config: dict[str, Any]) -> str:
    import json

    return json.dumps(config, sort_keys=True)


def _split_reference(image: str) -> tuple[str, str]:
    """``(repository, tag or digest)`` for the pull API (without a tag it would pull every tag)."""
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = image.rpartition(":")
        return name, tag
    return image, "latest"


def _tail(path: Path) -> str:
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - STDERR_TAIL))
        return f.read().decode(errors="replace")


class DockerRuntime(Runtime):
    """Runs ``runtime="docker"`` tasks in containers of a Docker engine.

    Args:
        url: the engine's API (``unix:///…`` or ``tcp://…``); default ``$DOCKER_HOST``
            or the standard socket.
        scratch_root: the agent's scratch root (needed by ``reuse`` only).
    """

    name: ClassVar[str] = "docker"

    def __init__(self, *, url: str | None = None, scratch_root: Path | None = None) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
        self.scratch_root = scratch_root
        self._client: aiodocker.Docker | None = None
        self._pulls: dict[str, asyncio.Lock] = {}
        self._idle: dict[str, list[aiodocker.containers.DockerContainer]] = {}
        self._pooled: dict[str, aiodocker.containers.DockerContainer] = {}

    def _docker(self) -> aiodocker.Docker:
        if self._client is None:
            import aiodocker  # optional dependency: the `docker` extra

            self._client = aiodocker.Docker(url=self.url)
        return self._client

    async def aclose(self) -> None:
        pooled, self._pooled = list(self._pooled.values()), {}
        self._idle.clear()
        for container in pooled:
            await self._remove(container)
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def _ensure_image(self, image: str, policy: str) -> None:
        import aiodocker

        docker = self._docker()
        # One pull per image at a time: concurrent tasks of one image wait for it.
        async with self._pulls.setdefault(image, asyncio.Lock()):
            if policy != "always":
                try:
                    await docker.images.inspect(image)
                    return
                except aiodocker.DockerError as exc:
                    if exc.status != 404:
                        raise
                if policy == "never":
                    raise DockerError(f"image {image!r} is not present and the pull policy is 'never'")
            log.info("pulling image %s", image)
            repository, tag = _split_reference(image)
            try:
                await docker.images.pull(repository, tag=tag)
            except aiodocker.DockerError as exc:
                raise DockerError(f"pulling image {image!r} failed: {exc.message}") from exc

    async def run(self, execution: Execution) -> Outcome:
        import aiodocker

        a = execution.assignment
        policy = str(a.runtime_options.get("pull", "if-missing"))
        try:
            if policy not in PULL_POLICIES:
                raise DockerError(f"pull policy {policy!r} is not one of {', '.join(PULL_POLICIES)}")
            if not a.runtime_options.get("image"):
                raise DockerError("runtime_options has no 'image'")
            config = await asyncio.to_thread(docker_config, execution)
            await self._ensure_image(config["Image"], policy)
            if a.runtime_options.get("reuse"):
                return await self._run_reused(config, execution)
            name = _NAME_BAD.sub("_", f"dagon-{a.run}-{a.task}-{a.attempt}-{os.urandom(3).hex()}")[:200]
            container = await self._create(config, name)
        except DockerError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        except aiodocker.DockerError as exc:
            return Outcome(ResultStatus.ERROR, None, error=f"docker refused the container: {exc.message}")
        try:
            return await self._run_container(container, execution)
        except asyncio.CancelledError:
            await _finish(asyncio.ensure_future(self._remove(container)))
            raise
        except aiodocker.DockerError as exc:
            await self._remove(container)
            return Outcome(ResultStatus.ERROR, None, error=f"docker error: {exc.message}")
        except Exception:
            await self._remove(container)  # e.g. the engine's connection broke, or a log file failed
            raise

    async def _run_container(self, container: aiodocker.containers.DockerContainer, execution: Execution) -> Outcome:
        a = execution.assignment
        await container.start()
        status = ResultStatus.SUCCEEDED
        try:
            async with asyncio.timeout(a.timeout):
                result = await container.wait(timeout=None)
            code = int(result["StatusCode"])
        except TimeoutError:
            status = ResultStatus.TIMEOUT
            with contextlib.suppress(Exception):
                await container.stop(t=STOP_GRACE)
            info = await container.show()
            code = int(info["State"]["ExitCode"])
        # Read once the container has stopped: a followed stream can end before the
        # logging driver flushed a last line without a newline (seen on Engine 20.10).
        await self._save_logs(container.id, execution)
        tail = await asyncio.to_thread(_tail, execution.stderr)
        await self._remove(container)
        if status is ResultStatus.SUCCEEDED and code != 0:
            status = ResultStatus.FAILED
        error = f"container stopped after the {a.timeout:g} s timeout" if status is ResultStatus.TIMEOUT else ""
        if code == 137 and status is ResultStatus.FAILED:
            error = "the container was killed (exit 137: out of memory or SIGKILL)"
        return Outcome(status, code, error=error, stderr_tail=tail)

    async def _save_logs(self, container_id: str, execution: Execution) -> None:
        """Stream the engine's multiplexed logs (8-byte frame headers: stream, size) into the files.

        In bounded memory (frames go straight to the files). The bytes are what the
        engine's logging driver kept: the default json-file driver stores text, so
        invalid UTF-8 comes back as U+FFFD.
        """
        params = {"stdout": "1", "stderr": "1"}
        query = self._docker()._query(f"containers/{container_id}/logs", params=params, timeout=None)
        with execution.stdout.open("wb", buffering=0) as out, execution.stderr.open("wb", buffering=0) as err:
            async with query as response:
                while True:
                    try:
                        header = await response.content.readexactly(8)
                    except asyncio.IncompleteReadError:
                        return
                    size = int.from_bytes(header[4:8], "big")
                    data = await response.content.readexactly(size)
                    # Small writes to local files: not worth a thread hop each.
                    (err if header[0] == 2 else out).write(data)

    async def _create(self, config: dict[str, Any], name: str) -> aiodocker.containers.DockerContainer:
        """Create a container; if cancelled meanwhile, the engine may have made it: remove it."""
        creating = asyncio.ensure_future(self._docker().containers.create(config, name=name))
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                made = await _finish(creating)
                await _finish(asyncio.ensure_future(self._remove(made)))
            raise

    async def _run_reused(self, config: dict[str, Any], execution: Execution) -> Outcome:
        if self.scratch_root is None or not execution.workdir.is_relative_to(self.scratch_root):
            raise DockerError("reuse needs the agent's scratch root (DockerRuntime(scratch_root=...))")
        long_lived = _reuse_config(config, execution, self.scratch_root)
        key = _reuse_key(long_lived)
        idle = self._idle.setdefault(key, [])
        if idle:
            container = idle.pop()
        else:
            name = f"dagon-reuse-{os.urandom(4).hex()}"
            container = await self._create(long_lived, name)
            self._pooled[container.id] = container
            await container.start()
        healthy = False
        try:
            outcome = await self._exec(container, config, execution)
            healthy = outcome.status is not ResultStatus.TIMEOUT
            return outcome
        finally:
            if healthy and container.id in self._pooled:
                idle.append(container)
            else:
                self._pooled.pop(container.id, None)
                await _finish(asyncio.ensure_future(self._remove(container)))

    async def _exec(
        self, container: aiodocker.containers.DockerContainer, config: dict[str, Any], execution: Execution
    ) -> Outcome:
        a = execution.assignment
        run = await container.exec(
            cmd=[*config["Entrypoint"], *config["Cmd"]],
            stdout=True,
            stderr=True,
            user=config["User"],
            environment=config["Env"],
            workdir=config["WorkingDir"],
        )
        status = ResultStatus.SUCCEEDED
        with execution.stdout.open("wb", buffering=0) as out, execution.stderr.open("wb", buffering=0) as err:
            try:
                async with asyncio.timeout(a.timeout):
                    stream = run.start(detach=False, timeout=None)
                    async with stream:
                        while (msg := await stream.read_out()) is not None:
                            # A few small writes per task: not worth a thread hop each.
                            (err if msg.stream == 2 else out).write(msg.data)
            except TimeoutError:
                status = ResultStatus.TIMEOUT
        tail = await asyncio.to_thread(_tail, execution.stderr)
        if status is ResultStatus.TIMEOUT:
            return Outcome(status, None, error=f"killed after the {a.timeout:g} s timeout", stderr_tail=tail)
        code = (await run.inspect()).get("ExitCode")
        code = int(code) if code is not None else None
        if code != 0:
            status = ResultStatus.FAILED
        return Outcome(status, code, stderr_tail=tail)

    @staticmethod
    async def _remove(container: aiodocker.containers.DockerContainer) -> None:
        # force: a running container is killed first; errors only logged (already gone, engine down).
        try:
            await container.delete(force=True, v=True)
        except Exception as exc:
            log.warning("could not remove container %s: %s", container.id, exc)
