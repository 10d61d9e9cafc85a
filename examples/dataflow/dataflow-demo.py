"""The DAGonStar dataflow demo, written exactly as DAGonStar scripts are.

A makes a file; B and C each prepend a random number to a copy of it; D joins
both. Every edge comes from a ``workflow:///TASK/PATH`` reference. The script
reads ``./dagon.ini`` when there is one (see ``dagon.ini.sample``) and works
without it.

    python examples/dataflow/dataflow-demo.py            # embedded broker + agent
    DAGON_BROKER=mqtt://127.0.0.1:1883 python examples/dataflow/dataflow-demo.py
    dagon run --dry-run examples/dataflow/dataflow-demo.py
"""

import json

from dagon import Workflow
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    workflow = Workflow("DataFlow-Demo")

    taskA = DagonTask(TaskType.BATCH, "A", "mkdir output; hostname > output/f1.txt")
    taskB = DagonTask(TaskType.BATCH, "B", "echo $RANDOM > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt")
    taskC = DagonTask(TaskType.BATCH, "C", "echo $RANDOM > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt")
    taskD = DagonTask(TaskType.BATCH, "D", "cat workflow:///B/f2.txt >> f3.txt; cat workflow:///C/f2.txt >> f3.txt")

    workflow.add_task(taskA)
    workflow.add_task(taskB)
    workflow.add_task(taskC)
    workflow.add_task(taskD)

    workflow.make_dependencies()

    with open("dataflow-demo.json", "w") as outfile:
        outfile.write(json.dumps(workflow.as_json(), sort_keys=True, indent=2))

    workflow.run()

    if workflow.get_dry() is False:
        with open(taskD.get_scratch_dir() + "/f3.txt") as infile:
            print(infile.readlines())
