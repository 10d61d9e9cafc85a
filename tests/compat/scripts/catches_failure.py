"""A script that catches its own failed run: it must run once, under python and under dagon run."""

from dagon import TaskFailed, Workflow
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    workflow = Workflow("Catches")
    workflow.add_task(DagonTask(TaskType.BATCH, "A", "echo attempt >> $HOME_COUNT; exit 4"))
    try:
        workflow.run()
    except TaskFailed as exc:
        print("caught:", exc.failed)
