"""DAGonStar compatibility: ``from dagon.docker_task import DockerTask`` (the ``docker`` runtime)."""

from dagon._dagonstar._classes import DockerRemoteTask, DockerTask

__all__ = ["DockerRemoteTask", "DockerTask"]
