"""DAGonStar's CHECKPOINT task: the files it names are gathered and kept.

In DAGonStar the "command" of a ``TaskType.CHECKPOINT`` task is a list of
``workflow://`` references; each file is staged in and kept under the checkpoint's
directory as ``<workflow>/<task>/<path>``, so later tasks read
``workflow:///Checkpoint_1/<workflow>/<task>/<path>``, and the checkpoint's
directory is never garbage-collected. A file that does not exist fails the
checkpoint. Here the list becomes a shell command doing exactly that with the
staged inputs (the task runs on the ``process`` runtime and is marked
``checkpoint=True``, so its outputs are kept and, where agents offer it, stored).
"""

from __future__ import annotations

import posixpath
import shlex

from dagon.core import ValidationError, find_references

__all__ = ["checkpoint_command"]


def checkpoint_command(name: str, references: str, *, workflow: str) -> str:
    """The shell command of checkpoint task ``name`` of ``workflow`` keeping ``references``.

    Raises:
        ValidationError: the list is empty or holds something other than ``workflow://`` references.
    """
    words = references.split()
    refs = find_references(references, task=name)
    found = {ref.text for ref in refs}
    others = [word for word in words if word not in found]
    if not refs or others:
        raise ValidationError(
            f"checkpoint task {name!r}: its command is the list of files to keep, each a workflow:// reference"
            f" (e.g. 'workflow:///D/f3.txt workflow:///E/out'), got {references!r}",
            tasks=[name],
        )
    lines = ["set -e"]
    for ref in refs:
        folder = posixpath.join(ref.workflow or workflow, ref.task, posixpath.dirname(ref.path))
        target = shlex.quote(folder + "/")
        lines.append(f"mkdir -p {target}")
        lines.append(f"cp -RL -- {ref.text} {target}")
    return "\n".join(lines)
