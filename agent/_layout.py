"""Where an attempt's task directory is inside an agent's scratch root: two layouts.

``run`` (dagon's own, the default): ``<scratch>/<run>/<task>-<attempt>``, derived from the
attempt; nothing is recorded.

``dagonstar`` (DAGonStar's, used for its scripts' ``dagon.ini``): ``<scratch>/<epoch ms>-<task>``
directly in the root, the name DAGonStar's ``Task.get_scratch_name`` gives. A retry is a new
attempt and gets a directory of its own, named by the millisecond it starts (one more while
that name is taken), so attempts never share files. Such a name cannot be derived from the
attempt, so the agent records it when it makes the directory, in
``<scratch>/.dagon-index/<run>/<task>-<attempt>``; every later lookup (staging, the data server,
uploads, garbage collection) reads that record, and the rest of the agent stays keyed by attempt.

Invariants: a record is a regular file the agent wrote, read and written without following links
(``O_NOFOLLOW`` on every directory on the way and on the file, the file created ``O_EXCL`` and
renamed into place) and only in directories owned by the agent's user (a shared root such as
``/tmp`` could hold an index someone else made and rewrites); its content is one path component
``<digits>-<task>`` for the task it is filed under, so a record can never name anything outside
the scratch root or another task's directory. A directory directly in a scratch root is staged
from only when the record of exactly that attempt names it (``is_task_dir``), as a ``run``-layout
directory is only when its path is that attempt's ``<run>/<task>-<attempt>``. Blocking: call
from a thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

from dagon.protocol import DagonError

__all__ = [
    "INDEX",
    "LAYOUTS",
    "SCRATCH_MARKER",
    "ScratchLayout",
    "StagingError",
    "forget",
    "in_scratch_root",
    "indexed",
    "indexed_name",
    "is_task_dir",
    "make_task_dir",
    "safe_component",
    "task_dir",
    "task_dir_name",
]

ScratchLayout = Literal["run", "dagonstar"]
LAYOUTS: Final[tuple[ScratchLayout, ...]] = ("run", "dagonstar")
SCRATCH_MARKER: Final = ".dagon-scratch"
INDEX: Final = ".dagon-index"  # dagonstar layout: <INDEX>/<run>/<task>-<attempt> holds the directory's name
_MAX_ENTRY: Final = 512
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    """``<run>/<task>-<attempt>``, relative to the scratch root (names checked): the ``run`` layout."""
    return Path(safe_component(run, "run name")) / f"{safe_component(task, 'task name')}-{attempt}"


def _entry(task: str, attempt: int) -> str:
    return f"{safe_component(task, 'task name')}-{attempt}"


@contextlib.contextmanager
def _dirs(scratch: Path, *names: str, create: bool = False, uid: int | None = None) -> Iterator[int]:
    """A descriptor of ``scratch/names…``, never through a link (``create``: make what is missing;
    ``uid``: each of ``names`` must belong to that user — in a shared root such as ``/tmp``, an index
    someone else made could be rewritten under the agent's feet)."""
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)  # readable: agents of other users on this host verify records
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, fd):
                    raise StagingError(f"{scratch}: {'/'.join(names)} is a symbolic link; refusing to use it") from None
                raise
            os.close(fd)
            fd = child
            if uid is not None and os.fstat(fd).st_uid != uid:
                raise StagingError(f"{scratch}: {'/'.join(names)} belongs to another user; refusing to use it")
        yield fd
    finally:
        os.close(fd)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _valid(name: str, task: str) -> bool:
    return re.fullmatch(r"[0-9]+-" + re.escape(task), name) is not None


def indexed_name(scratch: Path, run: str, task: str, attempt: int, *, uid: int | None = None) -> str | None:
    """The name recorded for this attempt in ``scratch`` (dagonstar layout), None if none;
    ``uid``: the record and its directories must belong to that user (default: this process's).

    Raises:
        StagingError: the record is a link, not a regular file, or names something else than
            a ``<digits>-<task>`` directory.
    """
    entry = _entry(task, attempt)
    uid = os.geteuid() if uid is None else uid
    try:
        with _dirs(scratch, INDEX, safe_component(run, "run name"), uid=uid) as index:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=index)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StagingError(f"{scratch}: the record of {run}/{entry} cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
            raise StagingError(f"{scratch}: the record of {run}/{entry} is not a regular file of the agent's")
        name = os.read(fd, _MAX_ENTRY).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not _valid(name, task):
        raise StagingError(f"{scratch}: the record of {run}/{entry} names {name!r}, not a directory of {task!r}")
    return name


def task_dir(scratch: Path, run: str, task: str, attempt: int) -> Path:
    """The attempt's directory in ``scratch``, whichever layout made it."""
    name = indexed_name(scratch, run, task, attempt)
    return scratch / name if name is not None else scratch / task_dir_name(run, task, attempt)


def make_task_dir(scratch: Path, run: str, task: str, attempt: int, layout: ScratchLayout, now: float) -> Path:
    """The directory for a new attempt: ``run`` layout, its path (made later, by staging or the
    runtime); ``dagonstar`` layout, ``<epoch ms of now>-<task>`` made now and recorded (an attempt
    that already has one, e.g. run again after the agent restarted, keeps it)."""
    if layout == "run":
        return scratch / task_dir_name(run, task, attempt)
    known = indexed_name(scratch, run, task, attempt)
    if known is not None and (scratch / known).is_dir():
        return scratch / known
    safe_component(task, "task name")
    millis = int(now * 1000)
    with _dirs(scratch) as root:
        while True:
            name = f"{millis}-{task}"
            try:
                os.mkdir(name, 0o755, dir_fd=root)
                break
            except FileExistsError:
                millis += 1  # another attempt (or task of that name) started in the same millisecond
    with _dirs(scratch, INDEX, safe_component(run, "run name"), create=True, uid=os.geteuid()) as index:
        tmp = f".{_entry(task, attempt)}.{os.urandom(6).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=index)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(name + "\n")
            os.rename(tmp, _entry(task, attempt), src_dir_fd=index, dst_dir_fd=index)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=index)
            raise
    return scratch / name


def indexed(scratch: Path, run: str) -> list[tuple[str, int]]:
    """The attempts of ``run`` recorded in ``scratch``, as (task, attempt)."""
    try:
        with _dirs(scratch, INDEX, safe_component(run, "run name"), uid=os.geteuid()) as index:
            names = os.listdir(index)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in names:
        task, sep, attempt = entry.rpartition("-")
        if sep and task and attempt.isdigit() and not entry.startswith("."):
            found.append((task, int(attempt)))
    return found


def forget(scratch: Path, run: str, task: str, attempt: int) -> None:
    """Remove the attempt's record (its directory is gone), and the run's index once empty."""
    try:
        with _dirs(scratch, INDEX, uid=os.geteuid()) as index:
            with (
                _dirs(scratch, INDEX, safe_component(run, "run name"), uid=os.geteuid()) as records,
                contextlib.suppress(FileNotFoundError),
            ):
                os.unlink(_entry(task, attempt), dir_fd=records)
            with contextlib.suppress(OSError):
                os.rmdir(run, dir_fd=index)
    except (FileNotFoundError, NotADirectoryError):
        return


def in_scratch_root(root: Path) -> bool:
    """Whether the (resolved) directory ``root`` lies where task directories are: in a marked
    scratch root (dagonstar layout) or in a run directory of one (run layout)."""
    return (root.parent / SCRATCH_MARKER).is_file() or (root.parent.parent / SCRATCH_MARKER).is_file()


def is_task_dir(given: Path, root: Path, run: str, task: str, attempt: int) -> bool:
    """Whether ``root`` (the resolved ``given``) is the task directory of exactly this attempt in a
    scratch root of this machine: ``<run>/<task>-<attempt>`` of a marked root, or the directory
    the root's record of this attempt names."""
    if not run:
        return False
    expected = task_dir_name(run, task, attempt).parts
    if root.parts[-2:] == expected and given.parts[-2:] == expected:
        return (root.parent.parent / SCRATCH_MARKER).is_file()
    marker = root.parent / SCRATCH_MARKER
    if given.name != root.name or not marker.is_file():
        return False
    # Another agent of this host may have written it: the record must be the marker's owner's.
    return indexed_name(root.parent, run, task, attempt, uid=marker.lstat().st_uid) == root.name
