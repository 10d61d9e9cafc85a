"""DAGonStar compatibility: ``from dagon.nomad_task import NomadTask`` (the ``nomad`` runtime)."""

from dagon._dagonstar._classes import NomadTask, RemoteNomadTask

__all__ = ["NomadTask", "RemoteNomadTask"]
