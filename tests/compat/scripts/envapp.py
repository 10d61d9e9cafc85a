"""A script using the Workflow attributes DAGonStar scripts rely on (logger, cfg, workflow_id, tasks)."""

from dagon import Workflow
from dagon.task import DagonTask, TaskType

if __name__ == "__main__":
    workflow = Workflow("EnvApp", {"scratch_dir_base": "scratch-here", "remove_dir": False})
    workflow.logger.info("building %s", workflow.name)
    workflow.add_task(DagonTask(TaskType.BATCH, "Setup", "echo ready > state.txt"))
    workflow.add_task(DagonTask(TaskType.BATCH, "Use", "cat workflow:///Setup/state.txt > used.txt"))
    workflow.make_dependencies()
    workflow.Validate_WF()
    print("base", workflow.cfg["batch"]["scratch_dir_base"], workflow.get_scratch_dir_base())
    print("id before", workflow.workflow_id)
    print("tasks", [t.name for t in workflow.tasks])
    print("found", workflow.find_task_by_name(workflow_name="EnvApp", task_name="Use").name)
    workflow.run()
    print("id after", str(workflow.workflow_id).startswith("EnvApp-"))
    print("status", [t.status.name for t in workflow.tasks])
