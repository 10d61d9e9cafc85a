"""DAGonStar's in-process transversal demo: two workflows in one DAG_TPS meta-workflow."""

import json

from dagon import Workflow
from dagon.dag_tps import DAG_TPS
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    wf1 = Workflow("wf1-local")
    wf1.add_task(DagonTask(TaskType.BATCH, "A", "mkdir output; echo from-A > output/f1.txt"))
    wf1.add_task(DagonTask(TaskType.BATCH, "C", "echo from-C > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt"))
    wf2 = Workflow("wf2-local")
    wf2.add_task(DagonTask(TaskType.BATCH, "E", "echo from-E > e.txt"))
    g = DagonTask(TaskType.BATCH, "G", "cat workflow:///E/e.txt workflow://wf1-local/C/f2.txt > f3.txt")
    wf2.add_task(g)
    meta = DAG_TPS("Transversal-Local")
    meta.add_workflow(wf1)
    meta.add_workflow(wf2)
    meta.make_dependencies()
    meta.Validate_WF()
    print("owner of G:", meta.find_workflow_task("G"), meta.find_task_by_name("wf2-local", "G").name)
    doc = meta.as_json(json_format="wf")
    with open("transversal-local.json", "w") as out:
        json.dump(doc, out, indent=2)
    print("wf command:", doc["tasks"]["G"]["command"])
    meta.run()
    with open(g.get_scratch_dir() + "/f3.txt") as result:
        print(result.read().split())
