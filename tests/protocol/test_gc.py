"""The collector's tuning for long-lived loops (``dagon.protocol._gc``), in fresh interpreters:
it changes process-wide state, which this test process must not share."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from dagon.protocol import ConfigError
from dagon.protocol._gc import YOUNG, tune_gc

PROBE = """
import gc, json
from dagon.protocol._gc import tune_gc
before = (gc.get_threshold(), gc.get_freeze_count())
first, again = tune_gc(), tune_gc()
after = (gc.get_threshold(), gc.get_freeze_count())
print(json.dumps({"before": before, "after": after, "first": first, "again": again}))
"""


def probe(**env: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", **env}
    )
    return dict(json.loads(out.stdout))


def test_tuned_by_default_once_per_process() -> None:
    seen = probe()
    (young, *older), frozen = seen["after"]
    assert seen["first"] is True and seen["again"] is False
    assert young == YOUNG and older == seen["before"][0][1:]
    assert frozen > 10_000  # the modules and classes loaded at start are out of every collection


def test_default_keeps_pythons_settings() -> None:
    seen = probe(DAGON_GC="default")
    assert seen["first"] is False and seen["after"] == seen["before"]


def test_an_unknown_mode_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"DAGON_GC='fast'.*'tuned'.*'default'"):
        tune_gc({"DAGON_GC": "fast"})
