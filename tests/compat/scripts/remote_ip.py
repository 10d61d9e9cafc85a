"""DAGonStar's remote variant: ``ip=`` names the host a task runs on (written from its documented API)."""

import os

from dagon import Workflow
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    workflow = Workflow("Remote-Ip")
    host = os.environ["REMOTE_IP"]
    remote = DagonTask(TaskType.BATCH, "R", "echo remote > r.txt", ip=host, ssh_username="dagon", keypath="id_rsa")
    local = DagonTask(TaskType.BATCH, "L", "cat workflow:///R/r.txt > l.txt")
    workflow.add_task(remote)
    workflow.add_task(local)
    workflow.make_dependencies()
    workflow.run()
    print(remote.get_scratch_dir())
