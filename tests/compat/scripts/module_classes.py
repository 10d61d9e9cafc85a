"""The original's task modules and classes, and options given by position (DAGonStar's constructors).

Nothing here can run on an agent without those runtimes: the script is meant for a dry run,
whose plan shows which dagon runtime and options each task became.
"""

import dagon.cloud as cm
from dagon import Workflow
from dagon.apptainer_task import ApptainerTask
from dagon.batch import Batch, Slurm
from dagon.checkpoint import Checkpoint
from dagon.config import read_config
from dagon.docker_task import DockerTask
from dagon.kubernetes_task import KubernetesTask
from dagon.nomad_task import NomadTask
from dagon.remote import CloudTask
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    config = read_config("dagon.ini")
    workflow = Workflow("Module-Classes")
    workflow.set_dry(True)
    keys = {"option": cm.KeyOptions.GET, "key_path": "dagon_services.pem", "cloud_args": {"name": "dagon"}}
    tasks = [
        Batch("A", "mkdir output; echo a > output/f1.txt"),
        Slurm("S", "cat workflow:///A/output/f1.txt > s.txt", "testing", 5),
        DagonTask(TaskType.SLURM, "S2", "hostname > h.txt", "debug", 2),
        DockerTask("D", "cat workflow:///A/output/f1.txt > d.txt", "ubuntu:22.04", remove=True),
        DagonTask(
            TaskType.CLOUD, "C", "echo c > c.txt", "ec2", "ubuntu", keys, instance_name="dagonTaskC", stop_instance=True
        ),
        CloudTask("C2", "echo c2 > c.txt", "ec2", "ubuntu", keys, instance_id="i-0123"),
        ApptainerTask("P", "echo p > p.txt", "docker://ubuntu:22.04", remove=True),
        KubernetesTask("K", "echo k > k.txt", "ubuntu:22.04", "default", remove=True, cleanup_timeout=30),
        NomadTask(
            "N", "echo n > n.txt", "ubuntu:22.04", "http://127.0.0.1:4646", volume="/data:/data", cpu=500, memory=256
        ),
        Checkpoint("K1", "workflow:///A/output/f1.txt"),
    ]
    for task in tasks:
        workflow.add_task(task)
    workflow.make_dependencies()
    workflow.run()
    print("sections:", sorted(config))
    print("classes:", ", ".join(type(t).__name__ for t in workflow.tasks))
