"""DAGonStar compatibility: ``from dagon.checkpoint import Checkpoint`` (files kept as a checkpoint)."""

from dagon._dagonstar._classes import Checkpoint

__all__ = ["Checkpoint"]
