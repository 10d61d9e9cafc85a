"""Shared plumbing of the CLI container runtimes (Charliecloud, Apptainer).

Both run one command line per attempt through :func:`run_process`, so they get
its process-group handling for free: the timeout and cancellation kill and reap
the container's processes, CPU time and peak RSS come from ``wait4``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Final

from dagon.agent.runtimes._base import Execution, Outcome
from dagon.agent.runtimes._process import run_process

__all__ = ["DEFAULT_PATH", "binds_of", "host_tool_env", "run_argv"]

# The container's PATH when the task sets none (images are not the host).
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_tool_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """What a container CLI itself needs from the agent's environment (not the task's)."""
    env = {k: os.environ[k] for k in ("HOME", "USER", "LOGNAME", "TMPDIR", "XDG_RUNTIME_DIR") if k in os.environ}
    env.setdefault("USER", _user_name())
    env["PATH"] = os.environ.get("PATH", DEFAULT_PATH)
    env.update(extra)
    return env


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):  # pragma: no cover - uid without a passwd entry
        return str(os.getuid())


async def run_argv(argv: Sequence[str], execution: Execution, *, env: Mapping[str, str]) -> Outcome:
    """Run ``argv`` (exec'd by bash, so its pid leads the group) for ``execution``.

    The exact command line is recorded in ``.dagon/command`` for debugging.
    """
    return await run_process(
        "exec " + shlex.join(argv),
        cwd=execution.workdir,
        env=env,
        stdout=execution.stdout,
        stderr=execution.stderr,
        time_limit=execution.assignment.timeout,
        record=execution.stdout.parent / "command",
    )


def binds_of(value: object) -> list[str]:
    """The ``binds`` option as a list of strings (validated at build time too)."""
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"binds must be a list of 'SRC[:DST[:OPTS]]' strings, got {value!r}")
    return [str(v) for v in value]
