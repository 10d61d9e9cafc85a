"""Container tasks: which options each container runtime understands, checked at build time.

The options travel to the agent as plain data in ``Task.runtime_options``; the
agent's runtime is what interprets them. Checking the keys here means a typo
(``imgae=``, ``device=``) fails when the workflow is built, not on a node later.
Kubernetes and Nomad validate their (larger) option sets on the agent side, so
only ``image`` is required for them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dagon.core._errors import ValidationError
from dagon.core._options import did_you_mean

__all__ = ["CONTAINER_OPTIONS", "CONTAINER_RUNTIMES", "check_container_options"]

_COMMON: Final = frozenset({"image", "shell"})
# None: any key is accepted here (the agent-side runtime validates them).
CONTAINER_OPTIONS: Final[Mapping[str, frozenset[str] | None]] = {
    "docker": _COMMON | {"pull", "user", "devices", "network", "volumes", "gpus", "reuse"},
    "apptainer": _COMMON
    | {"binds", "writable_tmpfs", "overlay", "nv", "rocm", "contain", "cleanenv", "executable", "pull"},
    "charliecloud": _COMMON | {"binds", "write", "private_tmp"},
    "kubernetes": None,
    "nomad": None,
}
CONTAINER_RUNTIMES: Final = frozenset(CONTAINER_OPTIONS)
_PULL: Final = ("never", "if-missing", "always")


def _list_of_str(task: str, key: str, value: Any) -> None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValidationError(
            f"task {task!r}: container option {key!r} must be a list of non-empty strings, got {value!r}",
            tasks=[task],
        )


def check_container_options(task: str, runtime: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`ValidationError` naming the first option ``runtime`` does not understand.

    Args:
        task: the task's name (for the message).
        runtime: ``docker``, ``apptainer``, ``charliecloud``, ``kubernetes`` or ``nomad``.
        options: the container settings, including ``image``.
    """
    if runtime not in CONTAINER_OPTIONS:
        raise ValidationError(
            f"task {task!r}: unknown container runtime {runtime!r}; use one of {', '.join(sorted(CONTAINER_RUNTIMES))}",
            tasks=[task],
        )
    image = options.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValidationError(f"task {task!r}: a {runtime} container needs image='...'", tasks=[task])
    known = CONTAINER_OPTIONS[runtime]
    if known is None:
        return
    for key in options:
        if key not in known:
            # The Task fields wf.container() also takes are valid there too: suggest among both.
            from dagon.core._model import _CONTAINER_TASK_FIELDS

            raise ValidationError(
                f"task {task!r}: {runtime} does not understand the option {key!r}"
                f"{did_you_mean(key, known | _CONTAINER_TASK_FIELDS)}; known options: {', '.join(sorted(known))}",
                tasks=[task],
            )
    for key in ("devices", "volumes", "binds"):
        if key in options:
            _list_of_str(task, key, options[key])
    if "pull" in options and options["pull"] not in _PULL:
        raise ValidationError(
            f"task {task!r}: pull must be one of {', '.join(_PULL)}, got {options['pull']!r}", tasks=[task]
        )
    for key in ("reuse", "writable_tmpfs", "nv", "rocm", "contain", "cleanenv", "write", "private_tmp"):
        if key in options and not isinstance(options[key], bool):
            raise ValidationError(f"task {task!r}: {key} must be true or false, got {options[key]!r}", tasks=[task])
    for key in ("user", "network", "shell", "overlay", "executable", "gpus"):
        if key in options and not isinstance(options[key], str):
            raise ValidationError(f"task {task!r}: {key} must be a string, got {options[key]!r}", tasks=[task])
