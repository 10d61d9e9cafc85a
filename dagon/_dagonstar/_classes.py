"""DAGonStar's task classes (``Batch``, ``Slurm``, ``DockerTask`` …), each a :class:`DagonTask` of one type.

DAGonStar builds tasks with ``DagonTask(TaskType.X, …)`` or with the class of the type
(``from dagon.docker_task import DockerTask``). Here every class is a ``DagonTask`` whose
type is fixed, with DAGonStar's constructor parameters in DAGonStar's order, so
``DockerTask("A", "cmd", "ubuntu:22.04")`` and ``Slurm("I", cmd, "testing", 5)`` mean what
they meant. The ``Remote…`` classes take the SSH options (``ip``, ``ssh_username``,
``keypath``, ``ssh_port``) by name, as DAGonStar's ``DagonTask`` factory passes them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dagon._dagonstar._task import DagonTask
from dagon._dagonstar._types import TaskType
from dagon.core import ValidationError

__all__ = [
    "ApptainerTask",
    "Batch",
    "Checkpoint",
    "CloudTask",
    "DockerRemoteTask",
    "DockerTask",
    "KubernetesTask",
    "NomadTask",
    "RemoteApptainerTask",
    "RemoteBatch",
    "RemoteKubernetesTask",
    "RemoteNomadTask",
    "RemoteSlurm",
    "RemoteTask",
    "Slurm",
]


class _Typed(DagonTask):
    """A DagonTask of the class's type; positional options in the order of :attr:`order`
    (default: the type's, see :data:`~dagon._dagonstar._types.POSITIONAL`)."""

    type_: ClassVar[TaskType] = TaskType.BATCH
    order: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, name: str, command: str, *args: Any, **options: Any) -> None:
        if self.order is not None:
            if len(args) > len(self.order):
                raise ValidationError(
                    f"task {name!r}: {type(self).__name__} takes at most {len(self.order)} options by position"
                    f" ({', '.join(self.order)}), got {len(args)}",
                    tasks=[name],
                )
            for key, value in zip(self.order, args, strict=False):
                options.setdefault(key, value)
            args = ()
        super().__init__(self.type_, name, command, *args, **options)


_SSH = ("ssh_username", "keypath", "ip", "working_dir")


class Batch(_Typed):
    """A shell command on an agent (``TaskType.BATCH``)."""


class RemoteTask(_Typed):
    """A shell command on another host (``ip=``).

    DAGonStar's ``RemoteTask(name, command, ssh_username, keypath, ip)``.
    """

    order = _SSH


class RemoteBatch(RemoteTask):
    """DAGonStar's remote batch task (``ip=`` / ``ssh_username=`` / ``keypath=``)."""


class Slurm(_Typed):
    """A Slurm job (``TaskType.SLURM``): ``Slurm(name, command, partition, ntasks)``."""

    type_ = TaskType.SLURM


class RemoteSlurm(Slurm):
    """A Slurm job on a cluster reached by SSH (``ip=``)."""


class Checkpoint(_Typed):
    """Files kept as a checkpoint (``TaskType.CHECKPOINT``): the command lists ``workflow://`` references."""

    type_ = TaskType.CHECKPOINT


class CloudTask(_Typed):
    """A task on a cloud instance (``TaskType.CLOUD``): ``CloudTask(name, command, provider, ssh_username,
    key_options, instance_id, instance_flavour, instance_name, stop_instance)``."""

    type_ = TaskType.CLOUD


class DockerTask(_Typed):
    """A task in a Docker container (``TaskType.DOCKER``): ``DockerTask(name, command, image, …)``."""

    type_ = TaskType.DOCKER


class DockerRemoteTask(DockerTask):
    """A Docker task on another host (``ip=``)."""


class ApptainerTask(_Typed):
    """A task in an Apptainer container (``TaskType.APPTAINER``)."""

    type_ = TaskType.APPTAINER


class RemoteApptainerTask(ApptainerTask):
    """An Apptainer task on another host (``ip=``)."""


class KubernetesTask(_Typed):
    """A task in a Kubernetes pod (``TaskType.KUBERNETES``)."""

    type_ = TaskType.KUBERNETES


class RemoteKubernetesTask(KubernetesTask):
    """A Kubernetes task whose cluster is reached through another host (``ip=``)."""


class NomadTask(_Typed):
    """A HashiCorp Nomad job (``TaskType.NOMAD``): ``NomadTask(name, command, image, nomad_address, …)``."""

    type_ = TaskType.NOMAD


class RemoteNomadTask(NomadTask):
    """A Nomad job submitted on another host (``ip=``)."""
