"""What the SSH runtime runs on the remote host for each kind of task (DAGonStar's remote variants).

``process`` runs the command with bash; ``docker`` and ``apptainer`` run it in a container
with the remote task directory mounted at the same path as its working directory;
``slurm`` submits it with ``sbatch --wait`` from the remote host (a login node);
``kubernetes`` runs it in a pod through the host's ``kubectl`` and ``nomad`` as a batch
job through the host's Nomad CLI (:mod:`dagon.agent.runtimes._ssh_orchestrated`). Each
returns the remote ``command.sh`` and, where killing the process group is not enough to
stop the work, a ``cleanup.sh`` the remote wrapper runs when the attempt is stopped
(``docker rm -f`` the container, ``scancel`` the job).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dagon.agent.runtimes._jobs import OptionError, Options
from dagon.agent.runtimes._slurm import OPTIONS as SLURM_OPTIONS
from dagon.agent.runtimes._slurm import slurm_arguments

__all__ = ["INNER_OPTIONS", "ORCHESTRATED", "RemoteScript", "remote_script"]

INNER_OPTIONS: Final[Mapping[str, frozenset[str]]] = {
    "process": frozenset(),
    # DAGonStar's names too: volume, remove (always), container_id (not reused); bind_paths,
    # overlay_size (a writable tmpfs), tmp_dir (the host's APPTAINER_TMPDIR decides).
    "docker": frozenset({"image", "volumes", "devices", "pull", "network", "user", "volume", "remove", "container_id"}),
    "apptainer": frozenset(
        {"image", "binds", "writable_tmpfs", "contain", "cleanenv", "bind_paths", "overlay_size", "tmp_dir", "remove"}
    ),
    "slurm": SLURM_OPTIONS,
    # kubectl and the Nomad CLI of the remote host (its kubeconfig / NOMAD_ADDR), DAGonStar's names.
    "kubernetes": frozenset({"image", "namespace", "privileged", "remove", "cleanup_timeout", "context"}),
    "nomad": frozenset(
        {"image", "nomad_address", "cpu", "memory", "datacenter", "region", "network_mode", "volume", "driver"}
    ),
}
ORCHESTRATED: Final = ("kubernetes", "nomad")
_PULL: Final = {"never": "never", "if-missing": "missing", "always": "always"}


@dataclass(frozen=True, slots=True)
class RemoteScript:
    command: str
    cleanup: str | None = None


def _list(opts: Mapping[str, Any], key: str) -> list[str]:
    value = opts.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v and "\n" not in v for v in value):
        raise OptionError(f"option {key!r} must be a list of strings, got {value!r}")
    return list(value)


def remote_script(
    inner: str, raw: Mapping[str, Any], *, env: Mapping[str, str], command: str, name: str, task: str,
    cpus: float, memory: int, timeout: float | None,
) -> RemoteScript:  # fmt: skip
    """The remote scripts for ``command`` run as ``inner`` with its options ``raw``.

    Args:
        name: a name unique to the attempt (container name, job name).

    Raises:
        OptionError: an unknown inner runtime or option.
    """
    if inner not in INNER_OPTIONS:
        raise OptionError(f"the ssh runtime runs {', '.join(map(repr, INNER_OPTIONS))} tasks, not {inner!r}")
    opts = Options(inner, raw, INNER_OPTIONS[inner])
    if inner in ORCHESTRATED:
        from dagon.agent.runtimes._ssh_orchestrated import kubectl_script, nomad_script

        build = kubectl_script if inner == "kubernetes" else nomad_script
        command_sh, cleanup_sh = build(opts, env=env, command=command, name=name, cpus=cpus, memory=memory)
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.isidentifier())
        return RemoteScript(exports + command_sh, exports + cleanup_sh)
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.isidentifier())
    q = shlex.quote
    if inner == "process":
        return RemoteScript(exports + command + "\n")
    if inner == "docker":
        argv = ["docker", "run", "--rm", "--name", name, "-v", '"$PWD:$PWD"', "-w", '"$PWD"']
        argv += [f"-e {q(k)}" for k in env if k.isidentifier()]
        volumes = _list(raw, "volumes") + _list(raw, "volume")
        argv += [f"-v {q(v)}" for v in volumes] + [f"--device {q(d)}" for d in _list(raw, "devices")]
        pull = raw.get("pull")
        if isinstance(pull, bool):
            pull = "always" if pull else "if-missing"
        if pull is not None:
            if pull not in _PULL:
                raise OptionError(f"docker option 'pull' must be one of {sorted(_PULL)} or true/false, got {pull!r}")
            argv.append(f"--pull {_PULL[pull]}")
        for key in ("network", "user"):
            if (value := opts.text(key)) is not None:
                argv.append(f"--{key} {q(value)}")
        argv += [q(opts.required("image")), "/bin/sh", "-c", q(command)]
        return RemoteScript(exports + "exec " + " ".join(argv) + "\n", exports + f"docker rm -f {q(name)}\n")
    if inner == "apptainer":
        argv = ["apptainer", "exec", "--bind", '"$PWD"', "--pwd", '"$PWD"']
        argv += [f"--bind {q(b)}" for b in _list(raw, "binds") + _list(raw, "bind_paths")]
        if raw.get("overlay_size"):
            argv.append("--writable-tmpfs")
        for key, flag in (("writable_tmpfs", "--writable-tmpfs"), ("contain", "--contain"), ("cleanenv", "--cleanenv")):
            if opts.flag(key) and flag not in argv:
                argv.append(flag)
        argv += [q(opts.required("image")), "/bin/sh", "-c", q(command)]
        return RemoteScript(exports + "exec " + " ".join(argv) + "\n")
    args, lines = slurm_arguments(raw, task=task, cpus=cpus, memory=memory, timeout=timeout)
    job = "#!/bin/bash\n" + "".join(f"{line}\n" for line in lines) + command + "\n"
    # sbatch --wait exits with the job's exit code; its job id goes to .dagon/slurm-job at once (stdbuf:
    # sbatch's stdout is a file, which C buffers until exit) for cleanup.sh's scancel.
    script = (
        exports
        + f"cat > .dagon/job.sh <<'DAGON_JOB_EOF'\n{job}DAGON_JOB_EOF\n"
        + 'stdbuf -oL sbatch --parsable --wait --export=ALL --chdir="$PWD"'
        + " --output=.dagon/job.out --error=.dagon/job.err "
        + " ".join(q(a) for a in args)
        + " .dagon/job.sh > .dagon/slurm-job\ncode=$?\n"
        + "cat .dagon/job.out 2>/dev/null; cat .dagon/job.err >&2 2>/dev/null\nexit $code\n"
    )
    return RemoteScript(
        script, exports + 'job=$(cut -d";" -f1 .dagon/slurm-job 2>/dev/null); [ -n "$job" ] && scancel "$job"\n'
    )
