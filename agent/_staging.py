"""Scratch directories, local staging of ``workflow://`` inputs, output manifests.

All functions here do blocking filesystem work: the agent calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from dagon.agent._layout import (
    SCRATCH_MARKER,
    StagingError,
    in_scratch_root,
    is_task_dir,
    safe_component,
    task_dir_name,
)
from dagon.protocol import REFERENCE_RE, OutputFile, StageInput
from dagon.protocol.transport import MANIFEST_FILE

__all__ = [
    "CHECKPOINTS",
    "SCRATCH_MARKER",
    "StagingError",
    "check_input_path",
    "clone_or_copy",
    "has_outputs",
    "input_root",
    "manifest",
    "mark_scratch_root",
    "rewrite_command",
    "rewrite_meta",
    "rewrite_value",
    "safe_component",
    "stage_inputs",
    "task_dir_name",
    "write_manifest",
]

log = logging.getLogger(__name__)

MAX_MANIFEST_FILES: Final = 10_000
CHECKPOINTS: Final = ".dagon-checkpoints"  # under the scratch root of a checkpoint store: others' checkpoints
_GLOB_CHARS: Final = frozenset("*?[")
FICLONE: Final = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int) — share the source's extents


def _check_producer_dir(item: StageInput, root: Path) -> None:
    """The reported directory must be the producer attempt's own (``<run>/<task>-<attempt>`` of a
    scratch root, or the directory the root's record of that attempt names: see
    :mod:`dagon.agent._layout`). Whatever host another agent claims to share, the only such
    directory on this machine is one a local agent made for exactly that attempt — never another run's."""
    if not is_task_dir(Path(item.source_dir), root, item.source_run, item.task, item.source_attempt):
        raise StagingError(
            f"input {item.ref}: the producer's directory {item.source_dir} is not the directory of {item.task!r}"
            f" attempt {item.source_attempt} of run {item.source_run!r}; refusing to stage from it"
        )


def check_input_path(item: StageInput) -> None:
    """Raises StagingError when an input's path is absolute or climbs out with ``..``."""
    _check_relative(item.path, item.ref)


def _check_relative(path: str, ref: str) -> None:
    if not path or path.startswith("/") or ".." in path.split("/") or "\x00" in path:
        raise StagingError(f"input {ref}: path {path!r} escapes the producer's directory")


def _link(src: Path, dst: Path, mode: str) -> None:
    if mode == "symlink":  # only for runtimes that bind the target read-only (see TaskRunner)
        dst.symlink_to(src)
        return
    # Every other mode ("copy"; "hardlink" is its deprecated alias) gives the consumer a file of
    # its own: a hard link or a writable symlink would let it change what its producer and
    # every other consumer read (one inode: no permission bit protects the other names).
    if not src.is_file():  # a FIFO would block the copy for ever; sockets and devices are no data
        raise StagingError(f"{src.name} is not a regular file (a pipe, socket or device); it cannot be staged")
    clone_or_copy(src, dst)


def _copy_data(src: int, dst: int) -> None:
    """All of ``src`` into ``dst`` in the kernel (copy_file_range), else through user space."""
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
        return
    except OSError:  # e.g. an old kernel across file systems; nothing was copied by a failing first call
        pass
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


def clone_or_copy(src: Path, dst: Path) -> bool:
    """Copy ``src`` to a new file ``dst`` (mode and times kept): a reflink — shared extents,
    copy-on-write, no data moved — where the file system has them (XFS, Btrfs, bcachefs…),
    else a copy in the kernel. Returns whether it was a reflink."""
    with src.open("rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.ioctl(fd, FICLONE, fin.fileno())
                cloned = True
            except OSError:  # no reflinks here (ext4, tmpfs), or another file system
                cloned = False
                _copy_data(fin.fileno(), fd)
        finally:
            os.close(fd)
    shutil.copystat(src, dst)
    return cloned


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
        marker.write_text(
            "dagon scratch root: task directories are <run>/<task>-<attempt>, or <epoch ms>-<task>"
            " recorded in .dagon-index/<run>/<task>-<attempt> (DAGonStar's layout)\n"
        )


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
        if not in_scratch_root(root):
            # The directory comes from the producing agent's report: never read from
            # anywhere but a task directory of a dagon scratch root (e.g. not /etc).
            raise StagingError(
                f"input {ref}: the producer's directory {root} is not a task directory of a dagon scratch root;"
                " refusing to stage from it"
            )
        _check_producer_dir(item, root)
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
    write_meta(workdir, MANIFEST_FILE, json.dumps(doc).encode())


def _meta_dir(workdir: Path) -> int:
    """A descriptor of ``workdir/.dagon``, opened without following a link the task may have planted."""
    try:
        return os.open(workdir / ".dagon", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (NotADirectoryError, FileNotFoundError) as exc:
        raise StagingError(
            f"the task replaced or removed its .dagon directory ({exc.strerror}): dagon writes its own files"
            " there and never through a link"
        ) from None


def write_meta(workdir: Path, name: str, data: bytes) -> None:
    """Write ``workdir/.dagon/name`` without following any link the task may have planted.

    A task running as another user (``run_as``) owns its directory and can replace
    ``.dagon`` or the file with a symlink while the agent (root) still writes there:
    ``.dagon`` is opened with ``O_NOFOLLOW``, the file is created under a fresh name
    relative to that descriptor (``O_EXCL``: never an existing file or link) and renamed
    over ``name`` (a rename replaces the name, it never writes through it).

    Raises:
        StagingError: ``.dagon`` is not a directory any more (e.g. a symlink).
    """
    meta = _meta_dir(workdir)
    try:
        tmp = f".{name}.{os.urandom(6).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=meta)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.rename(tmp, name, src_dir_fd=meta, dst_dir_fd=meta)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=meta)
            raise
    finally:
        os.close(meta)


def rewrite_meta(workdir: Path, name: str, line: Callable[[str], str]) -> bool:
    """Rewrite ``workdir/.dagon/name`` one line at a time through ``line`` (e.g. masking secrets in
    a captured stdout), with :func:`write_meta`'s care for links; a file the task removed is left
    alone. Returns whether anything changed (the file is replaced only then).

    Raises:
        StagingError: ``.dagon`` is not a directory any more (e.g. a symlink).
    """
    meta = _meta_dir(workdir)
    try:
        try:
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=meta)
        except (FileNotFoundError, OSError):
            return False
        tmp = f".{name}.{os.urandom(6).hex()}"
        changed = False
        with os.fdopen(src, "r", encoding="utf-8", errors="surrogateescape", newline="") as text:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=meta)
            try:
                with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as out:
                    for old in text:
                        new = line(old)
                        changed = changed or new != old
                        out.write(new)
                if changed:
                    os.rename(tmp, name, src_dir_fd=meta, dst_dir_fd=meta)
                else:
                    os.unlink(tmp, dir_fd=meta)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=meta)
                raise
        return changed
    finally:
        os.close(meta)


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
