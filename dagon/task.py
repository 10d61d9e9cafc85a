"""DAGonStar compatibility: ``from dagon.task import DagonTask, TaskType``.

``DagonTask(TaskType.X, name, command, *options, **options)`` builds a task the way
DAGonStar scripts do: the type picks the dagon runtime (``BATCH`` → ``process``,
``DOCKER`` → ``docker``, …) and the type's options become the task's
``runtime_options``. ``ip=`` (with ``ssh_username``, ``keypath``, ``ssh_port``)
selects the remote variant. See ``docs/dagonstar.md``.
"""

from dagon._dagonstar._task import DagonTask
from dagon._dagonstar._types import DataMover, StagerMover, Status, TaskType

__all__ = ["DagonTask", "DataMover", "StagerMover", "Status", "TaskType"]
