"""Scratch directories, local staging of ``workflow://`` inputs, output manifests.

All functions here do blocking filesystem work: the agent calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from dagon.protocol import REFERENCE_RE, DagonError, OutputFile, StageInput
from dagon.protocol.transport import MANIFEST_FILE

__all__ = [
    "CHECKPOINTS",
    "SCRATCH_MARKER",
    "StagingError",
    "check_input_path",
    "has_outputs",
    "input_root",
    "manifest",
    "mark_scratch_root",
    "rewrite_command",
    "rewrite_value",
    "safe_component",
    "stage_inputs",
    "task_dir_name",
    "write_manifest",
]

log = logging.getLogger(__name__)

MAX_MANIFEST_FILES: Final = 10_000
SCRATCH_MARKER: Final = ".dagon-scratch"
CHECKPOINTS: Final = ".dagon-checkpoints"  # under the scratch root of a checkpoint store: others' checkpoints
_GLOB_CHARS: Final = frozenset("*?[")


class StagingError(DagonError):
    """An input could not be staged; the message names the reference.

    ``lost``: the producer task whose output is gone or corrupt (not a mistake in the
    workflow): the coordinator runs it again instead of failing the consumer.
    """

    def __init__(self, message: str, *, lost: str = "") -> None:
        super().__init__(message)
        self.lost = lost


def safe_component(name: str, what: str) -> str:
    """Return ``name`` if it is usable as one path component.

    Raises:
        StagingError: it is empty, ``.`` or ``..``, or contains ``/`` or NUL.
    """
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise StagingError(f"{what} {name!r} cannot be used as a directory name (no '/', NUL, '.' or '..')")
    return name


def task_dir_name(run: str, task: str, attempt: int) -> Path:
    """``<run>/<task>-<attempt>``, relative to the scratch root (names checked)."""
    return Path(safe_component(run, "run name")) / f"{safe_component(task, 'task name')}-{attempt}"


def check_input_path(item: StageInput) -> None:
    """Raises StagingError when an input's path is absolute or climbs out with ``..``."""
    _check_relative(item.path, item.ref)


def _check_relative(path: str, ref: str) -> None:
    if not path or path.startswith("/") or ".." in path.split("/") or "\x00" in path:
        raise StagingError(f"input {ref}: path {path!r} escapes the producer's directory")


def _link(src: Path, dst: Path, mode: str) -> None:
    if mode == "symlink":
        dst.symlink_to(src)
        return
    if mode == "hardlink":
        try:
            os.link(src, dst, follow_symlinks=False)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: fall back to a copy
    shutil.copy2(src, dst, follow_symlinks=False)


def _stage_one(src: Path, root: Path, dst: Path, mode: str, ref: str, parents: frozenset[Path] = frozenset()) -> None:
    resolved = src.resolve()
    if not resolved.is_relative_to(root):
        raise StagingError(f"input {ref}: {src.relative_to(root)} points outside the producer's directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if resolved.is_dir():
        if resolved in parents:
            raise StagingError(f"input {ref}: {src.relative_to(root)} is a symlink loop")
        # Directories are recreated in every mode (never linked whole) so each file
        # inside passes the containment check above.
        dst.mkdir(exist_ok=True)
        for child in sorted(resolved.iterdir()):
            _stage_one(child, root, dst / child.name, mode, ref, parents | {resolved})
        return
    _link(resolved, dst, mode)


def mark_scratch_root(scratch: Path) -> None:
    """Mark ``scratch`` as a dagon scratch root: the only places inputs are staged from."""
    marker = scratch / SCRATCH_MARKER
    if not marker.exists():
        marker.write_text("dagon scratch root: task directories are <run>/<task>-<attempt>\n")


def stage_inputs(inputs: Iterable[StageInput], workdir: Path, *, host_id: str, mode: str) -> dict[str, str]:
    """Stage every input under ``workdir/.dagon/inputs``; returns reference → staged path."""
    (workdir / ".dagon").mkdir(parents=True, exist_ok=True)
    staged: dict[str, str] = {}
    for item in inputs:
        ref = item.ref
        if item.source_host != host_id:
            raise StagingError(f"input {ref}: produced on another host; it must be pulled, not linked")
        _check_relative(item.path, ref)
        if not item.source_dir:
            raise StagingError(f"input {ref}: the producer {item.task!r} reported no working directory")
        root = Path(item.source_dir).resolve()
        if not root.is_dir():
            raise StagingError(f"input {ref}: the producer's directory {root} no longer exists", lost=item.task)
        if not (root.parent.parent / SCRATCH_MARKER).is_file():
            # The directory comes from the producing agent's report: never read from
            # anywhere but a task directory of a dagon scratch root (e.g. not /etc).
            raise StagingError(
                f"input {ref}: the producer's directory {root} is not a task directory of a dagon scratch root;"
                " refusing to stage from it"
            )
        dest_root = input_root(workdir, item)
        if _GLOB_CHARS & set(item.path):
            matches = sorted(Path(p) for p in glob.glob(glob.escape(str(root)) + "/" + item.path))
        else:
            candidate = root / item.path
            matches = [candidate] if candidate.exists() or candidate.is_symlink() else []
        if not matches:
            raise StagingError(f"input {ref}: no such file in {item.task}'s output", lost=item.task)
        if item.verify:
            verify_against_manifest(root, matches, ref, item.task)
        for src in matches:
            rel = src.relative_to(root)
            dst = dest_root / rel
            if dst.exists() or dst.is_symlink():
                continue  # the same input referenced twice
            _stage_one(src, root, dst, mode, ref)
        staged[ref] = str(dest_root / item.path)
    return staged


def input_root(workdir: Path, item: StageInput) -> Path:
    """Where ``item``'s files are staged: ``.dagon/inputs/<workflow>/<task>/`` (then its own path)."""
    base = workdir / ".dagon" / "inputs" / safe_component(item.workflow or "_", "workflow")
    return base / safe_component(item.task, "task")


def rewrite_command(command: str, staged: Mapping[str, str]) -> str:
    """Replace each ``workflow://`` reference by its staged path.

    References are found with the same grammar the coordinator used to extract
    them, so ``workflow:///A/x`` never rewrites part of ``workflow:///A/x.txt``.
    """
    if not staged:
        return command
    return REFERENCE_RE.sub(lambda m: staged.get(m.group(0), m.group(0)), command)


def rewrite_value(value: Any, staged: Mapping[str, str]) -> Any:
    """:func:`rewrite_command` applied to every string inside plain data (python task arguments)."""
    if not staged:
        return value
    if isinstance(value, str):
        return rewrite_command(value, staged)
    if isinstance(value, list | tuple):
        return type(value)(rewrite_value(v, staged) for v in value)
    if isinstance(value, dict):
        return {k: rewrite_value(v, staged) for k, v in value.items()}
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_against_manifest(root: Path, paths: Iterable[Path], ref: str, task: str) -> None:
    """Check files of a producer's directory against the sha256 manifest it wrote when it succeeded.

    Used for outputs the coordinator has not seen produced in its lifetime (a resumed
    run): a file that is missing from the manifest, changed or unreadable is lost.
    """
    try:
        listed = {d["path"]: d for d in json.loads((root / ".dagon" / MANIFEST_FILE).read_text())}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StagingError(f"input {ref}: {task}'s output manifest cannot be read ({exc})", lost=task) from None
    for path in paths:
        files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            rel = file.relative_to(root).as_posix()
            entry = listed.get(rel)
            try:
                ok = entry is not None and file.stat().st_size == entry["size"] and _sha256(file) == entry["sha256"]
            except OSError:
                ok = False
            if not ok:
                raise StagingError(f"input {ref}: {rel} does not match {task}'s output manifest", lost=task)


def write_manifest(workdir: Path, outputs: Iterable[OutputFile]) -> None:
    """Keep the manifest next to the outputs: the data server serves the producer's hashes."""
    doc = [{"path": o.path, "size": o.size, "sha256": o.sha256} for o in outputs]
    (workdir / ".dagon" / MANIFEST_FILE).write_text(json.dumps(doc))


def has_outputs(workdir: Path) -> bool:
    """Cheap check (one directory read) whether a task left anything besides ``.dagon/``."""
    with os.scandir(workdir) as entries:
        return any(entry.name != ".dagon" for entry in entries)


def manifest(workdir: Path, patterns: Iterable[str] = ()) -> tuple[OutputFile, ...]:
    """Regular files of a task's output (declared globs, else everything but ``.dagon/``)."""
    root = workdir.resolve()
    paths: list[Path] = []
    patterns = list(patterns)
    if patterns:
        for pattern in patterns:
            if pattern.startswith("/") or ".." in pattern.split("/"):
                log.warning("ignoring declared output %r: it is not inside the task's directory", pattern)
                continue
            for p in sorted(glob.glob(glob.escape(str(root)) + "/" + pattern, recursive=True)):
                paths.append(Path(p))
    else:
        for dirpath, dirnames, filenames in os.walk(root):
            if Path(dirpath) == root and ".dagon" in dirnames:
                dirnames.remove(".dagon")
            dirnames.sort()
            paths.extend(Path(dirpath) / name for name in sorted(filenames))
            if len(paths) >= MAX_MANIFEST_FILES:
                break
    if len(paths) > MAX_MANIFEST_FILES:
        log.warning("%s: more than %d output files, the manifest lists the first ones", root, MAX_MANIFEST_FILES)
    out = []
    seen: set[Path] = set()
    for path in paths[:MAX_MANIFEST_FILES]:
        # Symlinks are not followed: neither a link nor a file reached through a linked directory.
        if path in seen or path.is_symlink() or not path.is_file() or path.resolve().parent != path.parent:
            continue
        seen.add(path)
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] == ".dagon":
            continue
        out.append(OutputFile(path=str(rel), size=path.stat().st_size, sha256=_sha256(path)))
    return tuple(out)
