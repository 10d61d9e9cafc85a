"""What a container must see besides the task's own scratch directory."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["outside_link_targets"]


def outside_link_targets(workdir: Path) -> list[Path]:
    """Directories outside ``workdir`` that staged symlinks point into.

    With ``stage_mode = "symlink"`` an input is a link to the producer's file; a
    container that only sees ``workdir`` would find it dangling. Container runtimes
    bind these directories read-only at the same path, so the link resolves inside
    too (read-only: the consumer cannot change its producer's file). Copies need nothing
    (the common case: an empty list).
    """
    targets: set[Path] = set()
    # Staged inputs live under .dagon/inputs, so the walk includes .dagon.
    for dirpath, dirnames, filenames in os.walk(workdir):
        for name in [*filenames, *dirnames]:
            path = Path(dirpath, name)
            if path.is_symlink():
                resolved = path.resolve()
                if not resolved.is_relative_to(workdir) and resolved.exists():
                    targets.add(resolved if resolved.is_dir() else resolved.parent)
    # A directory already covered by a bound parent is not bound twice.
    ordered = sorted(targets, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for target in ordered:
        if not any(target.is_relative_to(k) for k in kept):
            kept.append(target)
    return kept
