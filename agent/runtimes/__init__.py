"""Agent runtimes: how a task's command actually runs."""

from dagon.agent.runtimes._base import Outcome
from dagon.agent.runtimes._process import run_process
from dagon.agent.runtimes._python import PythonRuntime, resolve_callable

__all__ = ["Outcome", "PythonRuntime", "resolve_callable", "run_process"]
