"""State files only their owner can read: ``DAGON_HOME`` 0700, the files in it 0600.

The run store, the result spool, ``known_agents`` and the keys hold commands, results
and trust decisions; other local users must neither read nor change them. A home
created by dagon is made 0700; an existing one that is more open is tightened (and
said so in the log). Files are created 0600 before SQLite opens them, so the WAL and
shared-memory files SQLite adds inherit that mode.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["private_dir", "private_file"]

log = logging.getLogger(__name__)


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700, or tighten it to 0700 when it is ours."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and info.st_uid == os.geteuid():
        path.chmod(0o700)
        log.info("made %s private (mode 0700): it holds dagon's state", path)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists; make an existing one of ours 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077 and info.st_uid == os.geteuid():
            path.chmod(0o600)
        return
    os.close(fd)
