"""DAGonStar compatibility: ``from dagon.apptainer_task import ApptainerTask`` (the ``apptainer`` runtime)."""

from dagon._dagonstar._classes import ApptainerTask, RemoteApptainerTask

__all__ = ["ApptainerTask", "RemoteApptainerTask"]
