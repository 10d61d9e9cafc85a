"""``workflow://`` references: parsing and path safety.

``workflow://[workflow]/task/path`` — an empty workflow means "this workflow".
A reference ends at whitespace, a quote, a backtick, one of ``;|&()<>`` or the
end of the command. The path is relative to the producing task's working
directory and may be a shell glob; absolute paths and ``..`` components are
rejected because they would escape the producer's directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagon.core._errors import ValidationError
from dagon.protocol import NAME_RE, REFERENCE_RE

__all__ = ["NAME_RE", "Reference", "check_name", "check_relative_path", "find_references"]


@dataclass(frozen=True, slots=True)
class Reference:
    """One ``workflow://`` reference found in a command.

    Attributes:
        text: the reference exactly as written (what gets rewritten).
        workflow: the producing workflow ("" = the current one).
        task: the producing task.
        path: path relative to the producer's working directory.
    """

    text: str
    workflow: str
    task: str
    path: str


def check_name(kind: str, name: str) -> None:
    """Raise ValidationError unless ``name`` is a usable workflow or task name."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name) > 200:
        raise ValidationError(f"{kind} name {name[:40]!r}… is longer than 200 characters", tasks=[name])
    if name in (".", "..") or NAME_RE.fullmatch(name) is None:
        raise ValidationError(
            f"{kind} name {name!r} is not allowed: use no '/', whitespace, quotes, control characters"
            " or any of ;|&()<>` (and not '.' or '..')",
            tasks=[name],
        )


def check_relative_path(path: str, *, what: str, task: str) -> None:
    """Reject paths that are empty, absolute or climb out with ``..``."""
    if not path:
        raise ValidationError(f"task {task!r}: {what} has an empty path", tasks=[task])
    if path.startswith("/"):
        raise ValidationError(
            f"task {task!r}: {what} uses the absolute path {path!r}; paths are relative to the producer's"
            " working directory",
            tasks=[task],
        )
    if ".." in path.split("/") or "\x00" in path:
        raise ValidationError(
            f"task {task!r}: {what} path {path!r} escapes the producer's directory ('..' is not allowed)",
            tasks=[task],
        )


def find_references(command: str, *, task: str) -> list[Reference]:
    """Every ``workflow://`` reference in ``command``, validated, in order."""
    if "workflow://" not in command:
        return []
    refs = []
    for match in REFERENCE_RE.finditer(command):
        workflow, producer, rest = match.group(1), match.group(2), match.group(3) or ""
        text = match.group(0)
        if not producer:
            raise ValidationError(
                f"task {task!r}: reference {text!r} names no task; write workflow:///TASK/PATH", tasks=[task]
            )
        path = rest[1:]
        while path.endswith("/") and len(path) > 1:
            path = path[:-1]
        check_relative_path(path, what=f"reference {text!r}", task=task)
        refs.append(Reference(text=text, workflow=workflow, task=producer, path=path))
    return refs
