"""Tasks run as an unprivileged user configured per agent (``run_as``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _broker import missing
from _keys import agent_security, coordinator_security

from dagon.agent import Agent, load_agent_config
from dagon.core import Coordinator, RunState
from dagon.protocol import ConfigError
from dagon.protocol.transport import MemoryHub

from ._stack import taskflow


@pytest.fixture
def open_scratch() -> Iterator[Path]:
    """A scratch root other users can traverse (pytest's own tmp dirs are private to root)."""
    if os.geteuid() != 0:
        missing("CI runs the suite as root; run_as needs it")
    path = Path(tempfile.mkdtemp(prefix="dagon-run-as-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def config(home: Path, scratch: Path, **flags: object) -> object:
    return load_agent_config(
        config_file=None,
        env={"DAGON_HOME": str(home)},
        flags={"id": "jailed", "scratch": str(scratch), "run_as": "nobody", **flags},
    )


async def test_tasks_run_as_nobody_and_still_stage_data(open_scratch: Path, tmp_path: Path) -> None:
    hub = MemoryHub()
    wf = taskflow()
    wf.shell("who", "id -u > uid.txt; (touch /root/dagon-was-here && echo wrote) > probe.txt 2>&1 || true")
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(connect=lambda will: hub.transport(will=will), coordinator_id="c", **coordinator_security())
        )
        agent = Agent(
            config=config(tmp_path, open_scratch / "scratch"),  # type: ignore[arg-type]
            connect=lambda will: hub.transport(will=will),
            **agent_security(),
        )
        await stack.enter_async_context(agent)
        assert "python" not in agent.capabilities.runtimes  # python tasks would run as root, inside the agent
        await coordinator.wait_for_agents(1)
        result = await coordinator.wait(await coordinator.submit(wf))
    assert result.state is RunState.SUCCEEDED, result.cause
    who = Path(result["who"].workdir)
    assert (who / "uid.txt").read_text().strip() == "65534"
    assert "Permission denied" in (who / "probe.txt").read_text()
    assert not Path("/root/dagon-was-here").exists()  # noqa: ASYNC240 - checked once, after the run
    assert (Path(result["E"].workdir) / "result.txt").read_text() == "B\nfrom-A\nC\nfrom-A\n"


async def test_an_unreachable_scratch_root_is_refused_at_start(open_scratch: Path, tmp_path: Path) -> None:
    private = tmp_path / "private"  # under pytest's 0700 directories
    agent = Agent(
        config=config(tmp_path, private / "scratch"),  # type: ignore[arg-type]
        connect=lambda will: MemoryHub().transport(will=will),
        **agent_security(),
    )
    with pytest.raises(ConfigError, match="closed to other users"):
        await agent.__aenter__()


def test_an_unknown_user_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no user 'no-such-user-here'"):
        config(tmp_path, tmp_path, run_as="no-such-user-here")
