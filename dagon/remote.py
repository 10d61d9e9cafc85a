"""DAGonStar compatibility: ``from dagon.remote import RemoteTask, CloudTask``.

``RemoteTask`` runs on another host (``ip=``: the agent at that address, else SSH);
``CloudTask`` on a cloud instance (the ``cloud`` runtime of an agent).
"""

from dagon._dagonstar._classes import CloudTask, RemoteTask

__all__ = ["CloudTask", "RemoteTask"]
