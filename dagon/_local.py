"""Wiring for the embedded default: an agent living in the caller's process.

``dagon.core`` and ``dagon.agent`` never import each other; this facade module
is where an in-process agent is put next to an in-process coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

from dagon._keys import agent_keys
from dagon.agent import Agent, load_agent_config, stable_agent_id
from dagon.agent._idlock import AgentIdTaken
from dagon.agent.runtimes import select_runtimes
from dagon.protocol.transport import MqttTransport, Transport, Will

__all__ = ["drain", "start_embedded_agent"]

EMBEDDED_IDS: Final = 16  # concurrent embedded agents per home (dagon run processes)
DRAIN_WAIT: Final = 5.0  # seconds an ending embedded run waits for its last acknowledgements


async def start_embedded_agent(
    stack: AsyncExitStack,
    *,
    url: str,
    home: Path,
    slots: int | None,
    coordinator: str,
    insecure: bool = False,
    scratch: Path | None = None,
    scratch_layout: str = "run",
) -> Agent:
    """Start an agent connected to the embedded broker at ``url``, working for ``coordinator``
    alone (see :meth:`Agent.serve_only`); stopped by ``stack``.

    Its id is the home's stable agent id, or that id with ``-2``, ``-3`` … when another process
    (a second ``dagon run``, a ``dagon-agent`` with the same home) holds it: each life reuses the
    first free one, so it finds what an earlier, killed process left (see ``dagon.agent._keeper``).
    ``scratch_layout``: how it names task directories (``"dagonstar"`` for a DAGonStar ``dagon.ini``).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_AGENT_ID")}
    env["DAGON_HOME"] = str(home)
    base = stable_agent_id(home)
    # Same home as the in-process coordinator: the agent trusts its key with no enrolment.
    signer, trust = (None, None) if insecure else await asyncio.to_thread(agent_keys, home)
    for n in range(1, EMBEDDED_IDS + 1):
        # The user's own tasks, run from the user's own process: they see its environment, as the
        # script does (a dagon-agent daemon gives its tasks a minimal one).
        flags: dict[str, object] = {"broker": url, "id": base if n == 1 else f"{base}-{n}", "inherit_env": True}
        if slots is not None:
            flags["slots"] = slots
        if scratch is not None:
            flags["scratch"] = str(scratch)
        flags["scratch_layout"] = scratch_layout
        config = load_agent_config(config_file=None, env=env, flags=flags)

        def connect(will: Will, agent_id: str = config.agent_id) -> Transport:
            return MqttTransport(url, client_id=f"dagon-agent-{agent_id}", will=will, protocol="3.1.1")

        runtimes = await select_runtimes(
            config.runtimes, home=config.home, scratch=config.scratch, ssh_key=config.ssh_key,
            ssh_known_hosts=config.ssh_known_hosts, ssh_scratch=config.ssh_scratch,
        )  # fmt: skip
        agent = Agent(config=config, connect=connect, runtimes=runtimes, signer=signer, trust=trust, insecure=insecure)
        try:
            entered = await stack.enter_async_context(agent)
        except AgentIdTaken:
            if n == EMBEDDED_IDS:
                raise
            continue
        entered.serve_only(coordinator)
        return entered
    raise AssertionError("unreachable")  # pragma: no cover


async def drain(agent: Agent, within: float = DRAIN_WAIT) -> None:
    """Wait (bounded) until the coordinator acknowledged every result the agent spooled: called
    before an embedded run's coordinator detaches, so a finished run leaves an empty spool."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await agent.spool.wait_empty()
