"""The plan of a dry run: what a run would do, computed with no side effect at all.

Nothing here touches the file system (beyond reading the workflow), starts a
broker, connects to one or publishes anything: a dry run validates, and says
which tasks would run where, after what, staging which files from where.
"""

from __future__ import annotations

from typing import Any

from dagon.core import Workflow
from dagon.core._model import RUNTIMES_BUILTIN
from dagon.protocol.transport import redact_url

__all__ = ["plan_text"]


def _where(task: Any, *, broker: str | None) -> str:
    if task.agent:
        where = f"agent {task.agent}"
    elif broker:
        where = f"any agent of {redact_url(broker)} offering runtime {task.runtime!r}"
    else:
        where = "the embedded agent on this machine"
        if task.runtime not in RUNTIMES_BUILTIN:
            where += f" (needs runtime {task.runtime!r} installed on it)"
    if task.labels:
        where += " with " + ",".join(f"{k}={v}" for k, v in task.labels.items())
    return where


def plan_text(workflow: Workflow, *, broker: str | None = None) -> str:
    """What a run of ``workflow`` would do (raises ValidationError if it is invalid)."""
    graph = workflow.graph(external=True)
    lines = [f"workflow {workflow.name!r}: {len(graph.order)} task(s), valid"]
    scratch = getattr(getattr(workflow, "ini", None), "scratch_dir_base", None)
    if scratch is not None and not broker:
        run_base = workflow.ini.run_base  # type: ignore[attr-defined]
        lines.append(f"  scratch directories under {scratch}" + (f"/{run_base}" if run_base else ""))
    for name in graph.order:
        task = workflow[name]
        deps = ", ".join(sorted(graph.deps[name])) or "-"
        lines.append(f"  {name}  [{task.runtime}] after: {deps}; runs on {_where(task, broker=broker)}")
        if task.runtime_options:
            opts = ", ".join(f"{k}={v!r}" for k, v in sorted(task.runtime_options.items()))
            lines.append(f"      options: {opts}")
        if task.map_over:
            lines.append(f"      map: one task per file matching {task.map_over} (decided when its producer ends)")
        external = {r.text for r in graph.external.get(name, ())}
        for ref in graph.refs_of(name):
            if ref.text in external:
                lines.append(f"      stages {ref.path!r} from {ref.task} of workflow {ref.workflow} ({ref.text})")
            else:
                lines.append(f"      stages {ref.path!r} from {ref.task} ({ref.text})")
        if task.after:
            lines.append(f"      explicit edges: after {', '.join(task.after)}")
    return "\n".join(lines)
