"""DAGonStar's explicit checkpoint, written from its documented API.

Checkpoint_1 keeps D's f3.txt as DataFlow-Checkpoint/D/f3.txt under its own directory;
E reads it from there. The run id goes to last_run.json; running the script again
resumes that run (nothing left to run: every task succeeded).
"""

from dagon import Workflow
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    workflow = Workflow("DataFlow-Checkpoint", checkpoint_file="last_run.json")
    workflow.set_dry(False)
    a = DagonTask(TaskType.BATCH, "A", "mkdir output; echo a > output/f1.txt")
    b = DagonTask(TaskType.BATCH, "B", "echo b > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt")
    d = DagonTask(TaskType.BATCH, "D", "cat workflow:///B/f2.txt >> f3.txt")
    checkpoint = DagonTask(TaskType.CHECKPOINT, "Checkpoint_1", "workflow:///D/f3.txt workflow:///A/output/f1.txt")
    e = DagonTask(
        TaskType.BATCH, "E", "mkdir output; cp workflow:///Checkpoint_1/DataFlow-Checkpoint/D/f3.txt output/f4.txt"
    )
    h = DagonTask(
        TaskType.BATCH,
        "H",
        "cat workflow:///E/output/f4.txt workflow:///Checkpoint_1/DataFlow-Checkpoint/A/output/f1.txt > f7.txt",
    )
    for task in (a, b, d, checkpoint, e, h):
        workflow.add_task(task)
    workflow.make_dependencies()
    workflow.run("last_run.json")
    if workflow.get_dry() is False:
        with open(h.get_scratch_dir() + "/f7.txt") as infile:
            print(infile.read().split())
