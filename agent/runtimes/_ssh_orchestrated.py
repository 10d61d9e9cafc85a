"""A task in a pod (``kubectl``) or a Nomad batch job (``nomad``) started from the remote host over SSH.

DAGonStar's remote Kubernetes and Nomad tasks (``ip=`` with ``TaskType.KUBERNETES`` or
``TaskType.NOMAD``): the remote host holds the cluster's credentials (its kubeconfig, its
``NOMAD_ADDR``/token) and dagon drives its command-line tools there. The scripts here
run in the remote task directory under the SSH runtime's wrapper, which kills them on
timeout, cancellation or connection loss and then runs the cleanup script.

kubectl (documented commands only: ``run``, ``wait``, ``exec``, ``delete``): a pod that
sleeps is started; the task directory goes in with ``tar`` through ``kubectl exec -i``
(at the same path, so rewritten paths in the command hold), the command runs through
``kubectl exec`` — whose exit status is the command's — and the directory comes back
the same way; the pod is deleted. The image needs ``sh`` and ``tar``.

Nomad (``job run -detach``, ``job allocs``, ``alloc status``, ``alloc logs``, ``job stop
-purge``): a one-task batch job without restarts or rescheduling, ``docker`` (the task
directory bind-mounted at its own path: the Nomad client runs on that host, with
``docker.volumes.enabled``) or ``raw_exec`` (``driver="raw_exec"``) in the directory;
its allocation is followed to its end, its logs copied, the task's exit code returned.

Neither has been run against the real product here (no kubectl cluster or Nomad can be
installed on our machines): the command lines are built to the tools' documentation
and tested as text; docs/remote-runtimes.md says so.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from typing import Final

from dagon.agent.runtimes._jobs import OptionError, Options

__all__ = ["kubectl_script", "nomad_script"]

HOLD: Final = "2147483647"  # seconds the pod's main process sleeps: the task runs through kubectl exec
_FILES: Final = ".dagon/remote-env.sh .dagon/remote-command.sh"


def _files(env: Mapping[str, str], command: str) -> str:
    """Write the task's environment and command into the directory that goes to the pod/job (mode 0600)."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.isidentifier())
    return (
        "umask 077\n"
        f"cat > .dagon/remote-env.sh <<'DAGON_ENV_EOF'\n{exports}DAGON_ENV_EOF\n"
        f"cat > .dagon/remote-command.sh <<'DAGON_COMMAND_EOF'\n{command}\nDAGON_COMMAND_EOF\n"
    )


def kubectl_script(
    opts: Options, *, env: Mapping[str, str], command: str, name: str, cpus: float, memory: int
) -> tuple[str, str]:
    """``command.sh`` and ``cleanup.sh`` running ``command`` in a pod through the host's ``kubectl``."""
    q = shlex.quote
    image = opts.required("image")
    kubectl = ["kubectl", f"--namespace={opts.text('namespace') or 'default'}"]
    if (context := opts.text("context")) is not None:
        kubectl.append(f"--context={context}")
    kc = " ".join(q(w) for w in kubectl)
    limits: dict[str, str] = {}
    if cpus > 0:
        limits["cpu"] = f"{math.ceil(cpus * 1000)}m"
    if memory > 0:
        limits["memory"] = f"{max(1, math.ceil(memory / 2**20))}Mi"
    container = {"name": name, "image": image, "resources": {"limits": limits, "requests": limits}}
    if opts.flag("privileged"):
        container["securityContext"] = {"privileged": True}
    overrides = json.dumps({"apiVersion": "v1", "spec": {"containers": [container]}}, separators=(",", ":"))
    wait = opts.integer("cleanup_timeout", minimum=1) or 300
    delete = f"{kc} delete pod {q(name)} --wait=false --ignore-not-found >/dev/null 2>&1\n"
    script = (
        _files(env, command)
        + f"{kc} run {q(name)} --image={q(image)} --restart=Never --labels=app.kubernetes.io/managed-by=dagon"
        f" --overrides={q(overrides)} --command -- sleep {HOLD} >/dev/null || exit 125\n"
        f"if ! {kc} wait --for=condition=Ready pod/{q(name)} --timeout={wait}s >/dev/null; then\n"
        f'  echo "dagon: pod {name} did not become ready within {wait} s" >&2; {delete.strip()}; exit 125\nfi\n'
        f'tar -cf - . | {kc} exec -i {q(name)} -- sh -c \'mkdir -p "$0" && tar -xf - -C "$0"\' "$PWD"'
        " || exit 125\n"
        f"{kc} exec {q(name)} -- sh -c 'cd \"$0\" && . .dagon/remote-env.sh && exec sh .dagon/remote-command.sh'"
        ' "$PWD"\ncode=$?\n'
        f'{kc} exec {q(name)} -- tar -cf - -C "$PWD" . | tar -xf - || code=${{code:-125}}\n'
    )
    keep = not opts.flag("remove", True)  # DAGonStar's remove=False keeps the pod for a look
    return script + ("" if keep else delete) + 'exit "$code"\n', delete


def _hcl(value: object) -> str:
    text = json.dumps(value)  # HCL takes JSON's string, number and list syntax
    return text.replace("${", "$${").replace("%{", "%%{")  # no HCL interpolation of task text


def nomad_script(
    opts: Options, *, env: Mapping[str, str], command: str, name: str, cpus: float, memory: int
) -> tuple[str, str]:
    """``command.sh`` and ``cleanup.sh`` running ``command`` as a Nomad batch job through the host's ``nomad``."""
    q = shlex.quote
    driver = opts.text("driver", "docker", choices=("docker", "raw_exec")) or "docker"
    run = ". .dagon/remote-env.sh && exec sh .dagon/remote-command.sh"
    if driver == "docker":
        volumes = ["@PWD@:@PWD@", *opts.paths("volume")]
        config = [f"image = {_hcl(opts.required('image'))}", 'command = "/bin/sh"', f"args = {_hcl(['-c', run])}",
                  'work_dir = "@PWD@"', f"volumes = {_hcl(volumes)}"]  # fmt: skip
        if (mode := opts.text("network_mode")) is not None:
            config.append(f"network_mode = {_hcl(mode)}")
    else:
        if opts.text("image") is not None or opts.paths("volume"):
            raise OptionError("nomad options 'image' and 'volume' are for driver='docker', not raw_exec")
        config = ['command = "/bin/sh"', f"args = {_hcl(['-c', 'cd @PWD@ && ' + run])}"]
    cpu = opts.integer("cpu", minimum=1) or max(100, math.ceil(cpus * 1000))  # MHz, as Nomad counts
    mem = opts.integer("memory", minimum=1) or (max(1, math.ceil(memory / 2**20)) if memory > 0 else 256)  # MB
    header = [f"datacenters = {_hcl([opts.text('datacenter') or 'dc1'])}", 'type = "batch"']
    if (region := opts.text("region")) is not None:
        header.append(f"region = {_hcl(region)}")
    job = (
        f"job {_hcl(name)} {{\n  " + "\n  ".join(header) + "\n"
        '  group "task" {\n    restart {\n      attempts = 0\n      mode = "fail"\n    }\n'
        "    reschedule {\n      attempts = 0\n      unlimited = false\n    }\n"
        f'    task "task" {{\n      driver = {_hcl(driver)}\n      config {{\n        '
        + "\n        ".join(config)
        + f"\n      }}\n      resources {{\n        cpu = {cpu}\n        memory = {mem}\n      }}\n    }}\n  }}\n}}\n"
    )
    escaped = job.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`").replace("@PWD@", "$PWD")
    address = opts.text("nomad_address")
    prefix = f"export NOMAD_ADDR={q(address)}\n" if address else ""
    stop = f"nomad job stop -purge {q(name)} >/dev/null 2>&1\n"
    terminated = '{{range (index .TaskStates "task").Events}}{{if eq .Type "Terminated"}}{{.ExitCode}}{{end}}{{end}}'
    script = (
        prefix + _files(env, command) + f"cat > .dagon/job.nomad.hcl <<DAGON_JOB_EOF\n{escaped}DAGON_JOB_EOF\n"
        "nomad job run -detach .dagon/job.nomad.hcl >.dagon/nomad-run.log 2>&1 ||"
        " { cat .dagon/nomad-run.log >&2; exit 125; }\n"
        'alloc=""\nwhile [ -z "$alloc" ]; do\n'
        f"  alloc=$(nomad job allocs -t '{{{{range .}}}}{{{{.ID}}}}{{{{end}}}}' {q(name)} 2>/dev/null)\n"
        '  [ -n "$alloc" ] || sleep 1\ndone\n'
        "while :; do\n"
        '  case "$(nomad alloc status -t \'{{.ClientStatus}}\' "$alloc" 2>/dev/null)" in'
        " complete|failed|lost) break ;; esac\n  sleep 1\ndone\n"
        'nomad alloc logs "$alloc" task\nnomad alloc logs -stderr "$alloc" task >&2\n'
        f'code=$(nomad alloc status -t {q(terminated)} "$alloc")\n'
    )
    return script + stop + 'exit "${code:-125}"\n', prefix + stop
