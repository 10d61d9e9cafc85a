"""DAGonStar's enums: task types and how they map onto dagon runtimes, statuses, data movers."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["RUNTIME_OF", "TYPE_OPTIONS", "DataMover", "StagerMover", "Status", "TaskType"]


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
    TaskType.APPTAINER: ("image", "bind_paths", "overlay_size", "tmp_dir"),
    TaskType.KUBERNETES: ("image", "namespace", "volumes", "devices", "privileged"),
    TaskType.NOMAD: ("image", "nomad_address", "cpu", "memory", "datacenter", "region", "network_mode"),
}  # fmt: skip

#: Options selecting the remote (SSH) variant of a task type.
SSH_OPTIONS: Final = ("ip", "ssh_username", "keypath", "ssh_port")
