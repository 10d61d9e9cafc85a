"""DAGonStar's enums: task types and how they map onto dagon runtimes, statuses, data movers."""

from __future__ import annotations

import enum
import logging
from typing import Any, Final

log = logging.getLogger("dagon.task")

__all__ = [
    "POSITIONAL",
    "RUNTIME_OF",
    "SSH_OPTIONS",
    "TYPE_OPTIONS",
    "DataMover",
    "StagerMover",
    "Status",
    "TaskType",
    "native_options",
]


class TaskType(enum.Enum):
    """What a DAGonStar task runs on; each maps to a dagon runtime (:data:`RUNTIME_OF`)."""

    CHECKPOINT = "checkpoint"
    BATCH = "batch"
    SLURM = "slurm"
    CLOUD = "cloud"
    DOCKER = "docker"
    APPTAINER = "apptainer"
    SINGULARITY = "apptainer"  # noqa: PIE796 - deliberately an alias: the older name of the same thing
    KUBERNETES = "kubernetes"
    NOMAD = "nomad"


class Status(enum.Enum):
    READY = "READY"
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"


class DataMover(enum.Enum):
    """How inputs are staged. On one host LINK and COPY choose symlink or copy; dagon
    picks the transfer between hosts itself, so the network movers keep the agent's default."""

    DONTMOVE = 0
    LINK = 1
    COPY = 2
    SCP = 3
    HTTP = 4
    HTTPS = 5
    FTP = 6
    SFTP = 7
    GRIDFTP = 8
    SKYCDS = 9


class StagerMover(enum.Enum):
    """Accepted for compatibility; dagon's agents stage inputs concurrently anyway."""

    NORMAL = 0
    PARALLEL = 1
    SLURM = 2


#: The dagon runtime a task type runs on (``ip=`` variants run on ``ssh``).
RUNTIME_OF: Final[dict[TaskType, str]] = {
    TaskType.CHECKPOINT: "process",
    TaskType.BATCH: "process",
    TaskType.SLURM: "slurm",
    TaskType.CLOUD: "cloud",
    TaskType.DOCKER: "docker",
    TaskType.APPTAINER: "apptainer",
    TaskType.KUBERNETES: "kubernetes",
    TaskType.NOMAD: "nomad",
}

#: The options each task type accepts (they travel to the runtime as ``runtime_options``).
TYPE_OPTIONS: Final[dict[TaskType, tuple[str, ...]]] = {
    TaskType.CHECKPOINT: (),
    TaskType.BATCH: (),
    TaskType.SLURM: ("partition", "ntasks", "memory", "time", "nodes", "ntasks_per_node"),
    TaskType.CLOUD: (
        "provider", "ssh_username", "key_options", "instance_id", "instance_flavour", "instance_name",
        "stop_instance",
    ),
    TaskType.DOCKER: ("image", "volume", "devices", "remove", "pull", "container_id"),
    TaskType.APPTAINER: ("image", "bind_paths", "overlay_size", "tmp_dir", "remove"),
    TaskType.KUBERNETES: ("image", "namespace", "volumes", "devices", "privileged", "remove", "cleanup_timeout"),
    TaskType.NOMAD: ("image", "nomad_address", "cpu", "memory", "datacenter", "region", "network_mode", "volume"),
}  # fmt: skip

#: DAGonStar's constructor parameters after ``name, command``, in order: what positional
#: options mean (``DagonTask(TaskType.CLOUD, "A", cmd, Provider.EC2, "ubuntu", keys)``).
#: Names dagon does not use (``working_dir``, ``globusendpoint`` …) are accepted and ignored.
POSITIONAL: Final[dict[TaskType, tuple[str, ...]]] = {
    TaskType.CHECKPOINT: ("working_dir", "globusendpoint", "transversal_workflow"),
    TaskType.BATCH: ("working_dir", "globusendpoint", "transversal_workflow"),
    TaskType.SLURM: ("partition", "ntasks", "working_dir"),
    TaskType.CLOUD: (
        "provider", "ssh_username", "key_options", "instance_id", "instance_flavour", "instance_name",
        "stop_instance", "endpoint",
    ),
    TaskType.DOCKER: (
        "image", "container_id", "working_dir", "globusendpoint", "remove", "volume", "devices", "pull",
        "transversal_workflow",
    ),
    TaskType.APPTAINER: (
        "image", "working_dir", "remove", "transversal_workflow", "bind_paths", "overlay_size", "tmp_dir",
    ),
    TaskType.KUBERNETES: ("image", "namespace", "working_dir", "remove", "transversal_workflow", "cleanup_timeout"),
    TaskType.NOMAD: (
        "image", "nomad_address", "working_dir", "volume", "cpu", "memory", "transversal_workflow",
        "globusendpoint", "network_mode", "datacenter", "region",
    ),
}  # fmt: skip

#: Options selecting the remote (SSH) variant of a task type.
SSH_OPTIONS: Final = ("ip", "ssh_username", "keypath", "ssh_port")


def _listed(value: Any) -> list[str] | None:
    """A list of strings from DAGonStar's string-or-list options (None: not that shape)."""
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def native_options(task_type: TaskType, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """DAGonStar's options of a container task type → (dagon ``runtime_options``, ``Task`` fields).

    Values of an unexpected shape are passed on unchanged under their own name, so the
    agent's runtime refuses them with a message naming the option. What dagon does
    differently is dropped with a warning: containers are always removed, the scratch
    directory is always mounted, the Nomad address and region are the agent's settings.
    """
    opts = dict(options)
    fields: dict[str, Any] = {}

    def rename(old: str, new: str, convert: Any) -> None:
        if old in opts:
            value = convert(opts[old])
            if value is not None:
                del opts[old]
                opts[new] = value

    def dropped(*keys: str, why: str) -> None:
        for key in keys:
            if key in opts:
                opts.pop(key)
                log.warning("TaskType.%s option %r is not used: %s", task_type.name, key, why)

    def pull(value: Any) -> str | None:
        if value in ("never", "if-missing", "always"):
            return str(value)
        return ("always" if value else "if-missing") if isinstance(value, bool) else None

    def whole(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    if task_type is TaskType.DOCKER:
        rename("volume", "volumes", _listed)
        rename("devices", "devices", _listed)
        rename("pull", "pull", pull)
        dropped("remove", why="dagon always removes a task's container")
        dropped("container_id", why="dagon runs each task in its own container (or with reuse=True)")
    elif task_type is TaskType.APPTAINER:
        rename("bind_paths", "binds", _listed)
        if opts.get("overlay_size"):
            opts.pop("overlay_size")
            opts["writable_tmpfs"] = True
        dropped("tmp_dir", why="set APPTAINER_TMPDIR on the agent")
        dropped("remove", why="dagon keeps no container instance after a task")
    elif task_type is TaskType.KUBERNETES:
        rename("devices", "devices", _listed)
        dropped("volumes", why="the scratch directory is mounted for every pod")
        dropped("remove", "cleanup_timeout", why="dagon always deletes a task's pod when the task ends")
    elif task_type is TaskType.NOMAD:
        rename("cpu", "cpu_mhz", whole)
        rename("datacenter", "datacenters", _listed)
        if whole(opts.get("memory")) is not None:
            fields["memory"] = opts.pop("memory") * 2**20  # DAGonStar gives MB
        dropped("nomad_address", "region", why="the agent's [nomad] settings say where and which region")
        dropped("volume", why="the task's scratch directory is mounted into the job; stage data with workflow://")
    return opts, fields
