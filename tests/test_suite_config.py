"""The suite's own settings, which a test relies on without saying so."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def test_test_loops_run_in_asyncio_debug_mode() -> None:
    # pyproject's asyncio_debug: unawaited coroutines, loop calls from other threads and
    # slow callbacks show up in every async test, not only when someone thinks of them.
    assert asyncio.get_running_loop().get_debug()


async def test_only_a_full_second_blocking_the_loop_is_reported_as_slow() -> None:
    # tests/conftest.py: 0.1 s (the default) is load on a shared machine, not a bug.
    assert asyncio.get_running_loop().slow_callback_duration == 1.0


def test_every_package_is_in_the_distribution() -> None:
    """A package missing from pyproject's list works in an editable install and breaks `pip install .`."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping: dict[str, str] = config["package-dir"]
    found = set()
    for top, where in (
        ("dagon", "dagon"),
        ("dagon.core", "core"),
        ("dagon.agent", "agent"),
        ("dagon.protocol", "protocol"),
    ):
        for init in (root / where).rglob("__init__.py"):
            rel = init.parent.relative_to(root / where).parts
            found.add(".".join((top, *rel)))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert all(name in listed for name in mapping), mapping
