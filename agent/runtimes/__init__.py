"""Agent runtimes: how a task's command actually runs."""

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
    "Outcome",
    "PythonRuntime",
    "RunAs",
    "Runtime",
    "resolve_callable",
    "run_process",
]
