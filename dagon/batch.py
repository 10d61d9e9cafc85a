"""DAGonStar compatibility: ``from dagon.batch import Batch, Slurm`` (shell and Slurm tasks)."""

from dagon._dagonstar._classes import Batch, RemoteBatch, RemoteSlurm, Slurm

__all__ = ["Batch", "RemoteBatch", "RemoteSlurm", "Slurm"]
