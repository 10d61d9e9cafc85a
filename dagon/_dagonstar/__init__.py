"""The DAGonStar compatibility layer: DAGonStar scripts run unchanged on dagon.

:class:`Workflow` here is ``dagon.Workflow``: the native workflow
(:class:`dagon._workflow.NativeWorkflow`) with DAGonStar's API on top. The public
modules DAGonStar scripts import (``dagon.task``, ``dagon.dag_tps``, ``dagon.batch``,
``dagon.docker_task`` …) re-export what is defined here. See ``docs/dagonstar.md``.
"""

from dagon._dagonstar._meta import DAG_TPS
from dagon._dagonstar._task import DagonTask
from dagon._dagonstar._types import DataMover, StagerMover, Status, TaskType
from dagon._dagonstar._workflow import Workflow

__all__ = ["DAG_TPS", "DagonTask", "DataMover", "StagerMover", "Status", "TaskType", "Workflow"]
