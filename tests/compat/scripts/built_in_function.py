"""A workflow built inside a function and never run: ``dagon run`` runs it, ``python`` does nothing."""

from dagon import Workflow
from dagon.task import DagonTask, TaskType


def build() -> Workflow:
    workflow = Workflow("Built-In-Function")
    workflow.add_task(DagonTask(TaskType.BATCH, "A", "echo built > built.txt"))
    return workflow


if __name__ == "__main__":
    build()
    print("built")
