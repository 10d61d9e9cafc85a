"""The consuming half of the transversal pair: references wf1-transversal, run by another process."""

import json

from dagon import Workflow
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    wf2 = Workflow("wf2-transversal")
    e = DagonTask(TaskType.BATCH, "E", "mkdir output; echo from-E > output/f1.txt")
    f = DagonTask(
        TaskType.BATCH,
        "F",
        "cat workflow://wf1-transversal/A/output/f1.txt > f2.txt; cat workflow:///E/output/f1.txt >> f2.txt",
    )
    g = DagonTask(
        TaskType.BATCH, "G", "cat workflow:///F/f2.txt > f3.txt; cat workflow://wf1-transversal/C/f2.txt >> f3.txt"
    )
    for task in (e, f, g):
        wf2.add_task(task)
    wf2.make_dependencies()
    with open("wf2-transversal.json", "w") as out:
        json.dump(wf2.as_json(), out, indent=2)
    wf2.run()
    if wf2.get_dry() is False:  # under `dagon submit` the run is handed over, not run here
        with open(g.get_scratch_dir() + "/f3.txt") as result:
            print(result.read().split())
