"""Agent runtimes: how a task's command actually runs.

``KubernetesRuntime`` (extra ``k8s``) and ``NomadRuntime`` are
imported on first use, so the base install does not need their client libraries.
"""

from typing import TYPE_CHECKING, Any

from dagon.agent.runtimes._apptainer import ApptainerRuntime, ImageBuildError, SifCache, apptainer_argv
from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._charliecloud import CharliecloudRuntime, charliecloud_argv
from dagon.agent.runtimes._detect import (
    CONTAINER_RUNTIME_NAMES,
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
    "build_runtimes",
    "detect_runtimes",
    "docker_answers",
    "select_runtimes",
    "ApptainerRuntime",
    "CharliecloudRuntime",
    "ImageBuildError",
    "SifCache",
    "apptainer_argv",
    "charliecloud_argv",
    "DockerRuntime",
    "docker_config",
    "KILL_GRACE",
    "Execution",
    "MAX_VALUE_BYTES",
    "STDERR_TAIL",
    "KubernetesRuntime",
    "KubernetesSettings",
    "NomadRuntime",
    "NomadSettings",
    "Outcome",
    "PythonRuntime",
    "RunAs",
    "Runtime",
    "orchestrator_runtimes",
    "read_orchestrator_settings",
    "resolve_callable",
    "run_process",
]

if TYPE_CHECKING:
    from dagon.agent.runtimes._kubernetes import KubernetesRuntime
    from dagon.agent.runtimes._nomad import NomadRuntime


def __getattr__(name: str) -> Any:
    if name == "KubernetesRuntime":
        from dagon.agent.runtimes._kubernetes import KubernetesRuntime

        return KubernetesRuntime
    if name == "NomadRuntime":
        from dagon.agent.runtimes._nomad import NomadRuntime

        return NomadRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
