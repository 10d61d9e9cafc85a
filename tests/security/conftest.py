from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._deploy import Deployment


@pytest.fixture
def deployment(mosquitto: Any, tmp_path: Path) -> Iterator[Deployment]:
    deployed = Deployment(mosquitto.url, tmp_path)
    try:
        yield deployed
    finally:
        deployed.close()
