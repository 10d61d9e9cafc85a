"""Staging on a file system with reflinks (a real XFS, loop-mounted): the consumer's copy shares
the producer's extents (no data written) and is still its own file — writing to it changes
nothing the producer or anyone else reads. On ext4 the same call makes a plain copy."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _broker import missing

from dagon.agent._staging import clone_or_copy

SIZE = 64 << 20


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    mkfs = shutil.which("mkfs.xfs") or "/usr/sbin/mkfs.xfs"
    if not os.access(mkfs, os.X_OK):
        missing("mkfs.xfs not installed (xfsprogs); run .ci/setup")
    if os.geteuid() != 0:
        missing("mounting a loop XFS needs root")
    image, mount = tmp_path / "xfs.img", tmp_path / "mnt"
    with image.open("wb") as f:
        f.truncate(512 << 20)  # sparse
    subprocess.run([mkfs, "-q", "-m", "reflink=1", str(image)], check=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def test_a_reflinked_input_shares_extents_and_is_still_the_consumers_own(xfs: Path) -> None:
    producer = xfs / "A-1" / "big.bin"
    producer.parent.mkdir()
    data = os.urandom(1 << 20) * (SIZE >> 20)
    producer.write_bytes(data)
    os.sync()
    before = free(xfs)
    staged = xfs / "B-1" / "big.bin"
    staged.parent.mkdir()
    assert clone_or_copy(producer, staged) is True
    os.sync()
    assert before - free(xfs) < SIZE // 8  # no 64 MiB written: the extents are shared
    assert os.stat(staged).st_ino != os.stat(producer).st_ino
    with staged.open("r+b") as f:  # the consumer writes into its input …
        f.write(b"consumer was here")
    assert producer.read_bytes() == data  # … the producer's file does not change


def test_without_reflinks_the_input_is_copied(tmp_path: Path) -> None:
    producer = tmp_path / "big.bin"
    producer.write_bytes(b"x" * 100_000)
    os.chmod(producer, 0o640)
    staged = tmp_path / "staged.bin"
    clone_or_copy(producer, staged)  # tmp is ext4 or tmpfs here: a copy (a reflink elsewhere)
    assert staged.read_bytes() == producer.read_bytes()
    assert os.stat(staged).st_mode == os.stat(producer).st_mode
    assert os.stat(staged).st_ino != os.stat(producer).st_ino
