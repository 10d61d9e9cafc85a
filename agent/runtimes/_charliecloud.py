"""The Charliecloud runtime: ``ch-run`` on an image directory or SquashFS file (unprivileged HPC containers).

Command line per attempt::

    ch-run -b WORKDIR -c WORKDIR [-b LINKED:LINKED …] [-b SRC[:DST] …] [-w] [-t] IMAGE -- /bin/sh -c COMMAND

The scratch directory is bound at the same path and is the working directory, so
rewritten ``workflow://`` paths stay valid. ``ch-run`` passes its environment
into the container, so it is started with the task's environment only (plus
``PATH`` and ``USER``, which ``ch-run`` requires), never the agent's.

Bind targets must exist in the image: for a *directory* image the runtime
creates the missing mount points (empty directories) inside it; for a SquashFS
image (read-only) the runtime binds the agent's scratch root instead of the task's
directory, so the image must contain that path (build it with the directory).

Options: ``image`` (required), ``binds`` (``SRC[:DST]``), ``write`` (``-w``, image
read-write), ``private_tmp`` (``-t``), ``shell`` (default ``/bin/sh``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import ClassVar

from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._cli import DEFAULT_PATH, binds_of, host_tool_env, run_argv
from dagon.agent.runtimes._mounts import outside_link_targets
from dagon.protocol import ResultStatus

__all__ = ["CharliecloudRuntime", "charliecloud_argv"]

_CH_ERROR = re.compile(r"^ch-run\[\d+\]: error: (.*)$", re.MULTILINE)


def charliecloud_argv(
    execution: Execution, *, ch_run: str = "ch-run", bind_root: Path | None = None
) -> tuple[list[str], list[Path]]:
    """The ``ch-run`` command line and the mount points it needs inside the image.

    Args:
        execution: the attempt.
        ch_run: the executable.
        bind_root: bind this directory (an ancestor of the workdir, e.g. the agent's
            scratch root) instead of the workdir itself — for SquashFS images, which
            cannot get a mount point per task and must contain this path.

    Raises:
        ValueError: an option is malformed.
    """
    opts = execution.assignment.runtime_options
    workdir = str(execution.workdir)
    bound = execution.workdir
    if bind_root is not None and execution.workdir.is_relative_to(bind_root):
        bound = bind_root
    argv = [ch_run, "-b", str(bound), "-c", workdir]
    targets = [bound]
    for linked in outside_link_targets(execution.workdir):
        argv += ["-b", str(linked)]
        targets.append(linked)
    for spec in binds_of(opts.get("binds")):
        src, _, dst = spec.partition(":")
        argv += ["-b", spec]
        targets.append(Path(dst or src))
    if opts.get("write"):
        argv.append("-w")
    if opts.get("private_tmp"):
        argv.append("-t")
    argv += [str(opts["image"]), "--", str(opts.get("shell", "/bin/sh")), "-c", execution.command]
    return argv, targets


def _make_mount_points(image: Path, targets: list[Path]) -> None:
    for target in targets:
        (image / target.relative_to("/")).mkdir(parents=True, exist_ok=True)


class CharliecloudRuntime(Runtime):
    """Runs ``runtime="charliecloud"`` tasks with ``ch-run``.

    Args:
        ch_run: the ``ch-run`` executable (default: found on ``PATH``).
        scratch_root: the agent's scratch root, bound whole for SquashFS images.
    """

    name: ClassVar[str] = "charliecloud"

    def __init__(self, *, ch_run: str | None = None, scratch_root: Path | None = None) -> None:
        self.ch_run = ch_run or shutil.which("ch-run") or "ch-run"
        self.scratch_root = scratch_root

    async def run(self, execution: Execution) -> Outcome:
        opts = execution.assignment.runtime_options
        image = opts.get("image")
        if not isinstance(image, str) or not image:
            return Outcome(ResultStatus.ERROR, None, error="runtime_options has no 'image'")
        try:
            is_dir = await asyncio.to_thread(os.path.isdir, image)
            root = None if is_dir else self.scratch_root
            argv, targets = await asyncio.to_thread(charliecloud_argv, execution, ch_run=self.ch_run, bind_root=root)
            if is_dir:
                await asyncio.to_thread(_make_mount_points, Path(image), targets)
        except (ValueError, OSError) as exc:
            return Outcome(ResultStatus.ERROR, None, error=f"charliecloud: {exc}")
        env = dict(execution.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("USER", host_tool_env()["USER"])
        outcome = await run_argv(argv, execution, env=env)
        # ch-run reports its own failures (bad bind, missing image) as exit 1 with
        # "ch-run[PID]: error: …": that is the agent's problem, not the task's.
        if outcome.status is ResultStatus.FAILED and outcome.exit_code == 1:
            found = _CH_ERROR.search(outcome.stderr_tail)
            if found:
                return Outcome(
                    ResultStatus.ERROR, 1, cpu_time=outcome.cpu_time, max_rss=outcome.max_rss,
                    error=f"ch-run could not start the container: {found.group(1)}", stderr_tail=outcome.stderr_tail,
                )  # fmt: skip
        return outcome
