"""A producing workflow another process links to (DAGonStar's WF1/WF2 "transversal" pair).

Written from DAGonStar's documented API. Run it, then wf2_transversal.py while it
runs: WF2's tasks read WF1's files through workflow://wf1-transversal/... .
The first task touches $WF1_STARTED so a test knows WF1 has been submitted.
"""

import os

from dagon import Workflow
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    config = {"scratch_dir_base": os.environ.get("WF_SCRATCH", "/tmp/dagon-transversal"), "remove_dir": False}
    wf1 = Workflow("wf1-transversal", config)
    started = os.environ.get("WF1_STARTED", "/dev/null")
    wf1.add_task(DagonTask(TaskType.BATCH, "A", f"mkdir output; echo from-A > output/f1.txt; touch {started}"))
    wf1.add_task(DagonTask(TaskType.BATCH, "B", "sleep 1; cat workflow:///A/output/f1.txt > f2.txt"))
    wf1.add_task(DagonTask(TaskType.BATCH, "C", "sleep 1; echo from-C > f2.txt"))
    wf1.make_dependencies()
    wf1.run()
    print("wf1 done", wf1.workflow_id)
