"""DAGonStar compatibility: ``from dagon.kubernetes_task import KubernetesTask`` (the ``kubernetes`` runtime)."""

from dagon._dagonstar._classes import KubernetesTask, RemoteKubernetesTask

__all__ = ["KubernetesTask", "RemoteKubernetesTask"]
