"""Container engines for the runtime tests: one private dockerd per session, built images.

Missing binaries skip locally and fail under ``CI=true`` (``.ci/setup`` installs them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _broker import missing
from _containers import (
    CHARLIECLOUD_MISSING,
    DOCKER_MISSING,
    Dockerd,
    busybox_rootfs,
    charliecloud_binary,
    dockerd_binary,
)


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    """A real dockerd on a private socket with a ``dagon-test/busybox`` image imported."""
    binary = dockerd_binary()
    if binary is None:
        missing(DOCKER_MISSING)
    engine = Dockerd(binary=binary, workdir=tmp_path_factory.mktemp("dockerd"))
    try:
        engine.start()
        engine.import_busybox()
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def busybox_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox image directory for Charliecloud (``ch-run`` needs nothing else)."""
    if charliecloud_binary() is None:
        missing(CHARLIECLOUD_MISSING)
    return busybox_rootfs(tmp_path_factory.mktemp("chimage") / "busybox")
