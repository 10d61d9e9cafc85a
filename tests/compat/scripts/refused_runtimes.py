"""Edge-fog style tasks on runtimes the embedded agent does not offer: refused before anything runs."""

from dagon import Workflow
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    workflow = Workflow("Edge-Fog-Nomad")
    workflow.add_task(DagonTask(TaskType.BATCH, "Sense", "echo 21.5 > t.txt"))
    workflow.add_task(
        DagonTask(
            TaskType.NOMAD,
            "Fog",
            "cat workflow:///Sense/t.txt",
            image="ubuntu:22.04",
            nomad_address="http://127.0.0.1:4646",
            volume="/data:/data",
            cpu=500,
            memory=256,
        )
    )
    workflow.add_task(
        DagonTask(
            TaskType.KUBERNETES,
            "Cloud",
            "cat workflow:///Sense/t.txt",
            image="ubuntu:22.04",
            remove=True,
            cleanup_timeout=30,
        )
    )
    workflow.make_dependencies()
    workflow.run()
