"""The Apptainer (or SingularityCE) runtime: ``apptainer exec`` on a SIF image from a per-agent cache.

Command line per attempt::

    apptainer exec --cleanenv --bind WORKDIR:WORKDIR --pwd WORKDIR [--bind LINKED:LINKED:ro …]
        [--bind SPEC …] [--writable-tmpfs] [--overlay PATH] [--nv] [--rocm] [--contain] SIF /bin/sh -c COMMAND

``--cleanenv`` keeps the agent's environment out; the task's variables travel as
``APPTAINERENV_NAME`` (``SINGULARITYENV_NAME`` for ``singularity``), the documented
way, so they never appear on a command line.

Images: a local ``.sif`` (or any local image file/directory) is used as it is; a
URI (``docker://…``, ``oras://…``, ``library://…``) is built once into the
cache with ``apptainer build`` and reused. Concurrent tasks of one image wait
for one build (a lock per image); the SIF is written under a temporary name and
renamed into place, so a reader never sees half a file, even with several agents
sharing the cache directory (at worst they both build, and one rename wins).

Options: ``image`` (required), ``binds``, ``writable_tmpfs``, ``overlay``,
``nv``, ``rocm``, ``contain``, ``cleanenv`` (default true), ``pull``
(``if-missing`` default, ``always`` rebuilds, ``never`` requires a cached SIF),
``executable`` (``apptainer`` or ``singularity``), ``shell``.

Apptainer cannot be installed on the development machines: the command lines and
the cache are tested with a stand-in executable, not against the real product.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import ClassVar, Final

from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._cli import binds_of, host_tool_env, run_argv
from dagon.agent.runtimes._mounts import outside_link_targets
from dagon.agent.runtimes._process import run_process
from dagon.protocol import ResultStatus

__all__ = ["ApptainerRuntime", "ImageBuildError", "SifCache", "apptainer_argv"]

_URI: Final = re.compile(r"^[a-z][a-z0-9+.-]*://")
_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]+")


class ImageBuildError(Exception):
    """``apptainer build`` failed or the image cannot be used (ends the attempt as ERROR)."""


def apptainer_argv(execution: Execution, sif: Path, *, executable: str = "apptainer") -> list[str]:
    """The ``exec`` command line for ``execution`` running in ``sif``.

    Raises:
        ValueError: an option is malformed.
    """
    opts = execution.assignment.runtime_options
    workdir = str(execution.workdir)
    argv = [executable, "exec"]
    if opts.get("cleanenv", True):
        argv.append("--cleanenv")
    argv += ["--bind", f"{workdir}:{workdir}", "--pwd", workdir]
    for linked in outside_link_targets(execution.workdir):
        argv += ["--bind", f"{linked}:{linked}:ro"]
    for spec in binds_of(opts.get("binds")):
        argv += ["--bind", spec]
    if opts.get("writable_tmpfs"):
        argv.append("--writable-tmpfs")
    if opts.get("overlay"):
        argv += ["--overlay", str(opts["overlay"])]
    for flag in ("nv", "rocm", "contain"):
        if opts.get(flag):
            argv.append(f"--{flag}")
    argv += [str(sif), str(opts.get("shell", "/bin/sh")), "-c", execution.command]
    return argv


def _env_prefix(executable: str) -> str:
    return "SINGULARITYENV_" if Path(executable).name.startswith("singularity") else "APPTAINERENV_"


class SifCache:
    """SIF images built once per image URI into ``root``.

    Args:
        root: the cache directory (created on first build).
        executable: ``apptainer`` or ``singularity``.
    """

    def __init__(self, root: Path, *, executable: str = "apptainer") -> None:
        self.root = root
        self.executable = executable
        self._locks: dict[str, asyncio.Lock] = {}
        self.builds = 0  # builds this cache started (observable for tests and metrics)

    def path_for(self, image: str) -> Path:
        """Where the SIF of ``image`` lives: a readable name plus a hash of the full URI."""
        digest = hashlib.sha256(image.encode()).hexdigest()[:16]
        readable = _SAFE.sub("_", _URI.sub("", image)).strip("_.")[:80] or "image"
        return self.root / f"{readable}-{digest}.sif"

    async def get(self, image: str, *, pull: str = "if-missing") -> Path:
        """The SIF for ``image``: a local file as is, else the cached build (built if needed).

        Raises:
            ImageBuildError: the local image is missing, ``pull="never"`` and nothing is
                cached, or the build failed (with the tail of its output).
        """
        if not _URI.match(image):
            path = Path(image)
            if not await asyncio.to_thread(path.exists):
                raise ImageBuildError(f"image {image!r} does not exist (give a .sif path or a docker://… URI)")
            return path
        target = self.path_for(image)
        async with self._locks.setdefault(image, asyncio.Lock()):
            exists = await asyncio.to_thread(target.is_file)
            if exists and pull != "always":
                return target
            if pull == "never":
                raise ImageBuildError(f"image {image!r} is not in the cache {self.root} and the pull policy is 'never'")
            await self._build(image, target)
        return target

    async def _build(self, image: str, target: Path) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
        log = target.with_name(f".{target.name}.build.log")
        self.builds += 1
        try:
            outcome = await run_process(
                "exec " + shlex.join([self.executable, "build", "--force", str(tmp), image]),
                cwd=self.root, env=host_tool_env(), stdout=log, stderr=log.with_suffix(".err"), time_limit=None,
            )  # fmt: skip
            if outcome.status is not ResultStatus.SUCCEEDED or not await asyncio.to_thread(tmp.is_file):
                raise ImageBuildError(
                    f"{self.executable} build of {image!r} failed (exit {outcome.exit_code}): "
                    f"{outcome.stderr_tail.strip()[-500:] or outcome.error}"
                )
            await asyncio.to_thread(os.replace, tmp, target)  # atomic: readers see all or nothing
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(tmp.unlink)


class ApptainerRuntime(Runtime):
    """Runs ``runtime="apptainer"`` tasks with ``apptainer exec`` (or ``singularity exec``).

    Args:
        cache: directory of the built SIF images.
        executable: ``apptainer`` or ``singularity`` (default: whichever is on ``PATH``);
            a task's ``executable`` option overrides it.
    """

    name: ClassVar[str] = "apptainer"

    def __init__(self, *, cache: Path, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("apptainer") or shutil.which("singularity") or "apptainer"
        self.cache = SifCache(cache, executable=self.executable)

    async def run(self, execution: Execution) -> Outcome:
        opts = execution.assignment.runtime_options
        image = opts.get("image")
        if not isinstance(image, str) or not image:
            return Outcome(ResultStatus.ERROR, None, error="runtime_options has no 'image'")
        executable = str(opts.get("executable") or self.executable)
        try:
            sif = await self.cache.get(image, pull=str(opts.get("pull", "if-missing")))
            argv = await asyncio.to_thread(apptainer_argv, execution, sif, executable=executable)
        except (ImageBuildError, ValueError) as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        prefix = _env_prefix(executable)
        env = host_tool_env({prefix + k: v for k, v in execution.env.items()})
        return await run_argv(argv, execution, env=env)
