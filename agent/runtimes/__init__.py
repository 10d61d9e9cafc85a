"""Agent runtimes: how a task's command actually runs.

``KubernetesRuntime`` (extra ``k8s``), ``NomadRuntime``, ``SlurmRuntime``,
``SshRuntime`` (extra ``ssh``), ``CloudRuntime`` (extra ``cloud``) and ``HttpRuntime``
are imported on first use, so the base install does not need their client libraries.
"""

from typing import TYPE_CHECKING, Any

from dagon.agent.runtimes._apptainer import ApptainerRuntime, ImageBuildError, SifCache, apptainer_argv
from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._charliecloud import CharliecloudRuntime, charliecloud_argv
from dagon.agent.runtimes._detect import (
    CONTAINER_RUNTIME_NAMES,
    REMOTE_RUNTIME_NAMES,
    build_runtimes,
    detect_runtimes,
    docker_answers,
    select_runtimes,
)
from dagon.agent.runtimes._docker import DockerRuntime, docker_config
from dagon.agent.runtimes._orchestrators import (
    KubernetesSettings,
    NomadSettings,
    orchestrator_runtimes,
    read_orchestrator_settings,
)
from dagon.agent.runtimes._process import KILL_GRACE, STDERR_TAIL, RunAs, run_process
from dagon.agent.runtimes._python import MAX_VALUE_BYTES, PythonRuntime, resolve_callable

__all__ = [
    "CONTAINER_RUNTIME_NAMES",
    "KILL_GRACE",
    "MAX_VALUE_BYTES",
    "REMOTE_RUNTIME_NAMES",
    "STDERR_TAIL",
    "ApptainerRuntime",
    "CharliecloudRuntime",
    "CloudRuntime",
    "DockerRuntime",
    "Execution",
    "HttpRuntime",
    "ImageBuildError",
    "KubernetesRuntime",
    "KubernetesSettings",
    "NomadRuntime",
    "NomadSettings",
    "Outcome",
    "PythonRuntime",
    "RunAs",
    "Runtime",
    "SifCache",
    "SlurmRuntime",
    "SshRuntime",
    "apptainer_argv",
    "build_runtimes",
    "charliecloud_argv",
    "detect_runtimes",
    "docker_answers",
    "docker_config",
    "orchestrator_runtimes",
    "read_orchestrator_settings",
    "resolve_callable",
    "run_process",
    "select_runtimes",
]

if TYPE_CHECKING:
    from dagon.agent.runtimes._cloud import CloudRuntime
    from dagon.agent.runtimes._http import HttpRuntime
    from dagon.agent.runtimes._kubernetes import KubernetesRuntime
    from dagon.agent.runtimes._nomad import NomadRuntime
    from dagon.agent.runtimes._slurm import SlurmRuntime
    from dagon.agent.runtimes._ssh import SshRuntime

_LAZY = {
    "CloudRuntime": "_cloud",
    "HttpRuntime": "_http",
    "KubernetesRuntime": "_kubernetes",
    "NomadRuntime": "_nomad",
    "SlurmRuntime": "_slurm",
    "SshRuntime": "_ssh",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"dagon.agent.runtimes.{module}"), name)
