"""Wiring for the embedded default: an agent living in the caller's process.

``dagon.core`` and ``dagon.agent`` never import each other; this facade module
is where an in-process agent is put next to an in-process coordinator.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from pathlib import Path

from dagon._keys import agent_keys
from dagon.agent import Agent, load_agent_config
from dagon.agent.runtimes import select_runtimes
from dagon.protocol.transport import MqttTransport, Transport, Will

__all__ = ["start_embedded_agent"]


async def start_embedded_agent(
    stack: AsyncExitStack,
    *,
    url: str,
    home: Path,
    slots: int | None,
    insecure: bool = False,
    scratch: Path | None = None,
) -> Agent:
    """Start an agent connected to the embedded broker at ``url``; stopped by ``stack``."""
    flags: dict[str, object] = {"broker": url}
    if slots is not None:
        flags["slots"] = slots
    if scratch is not None:
        flags["scratch"] = str(scratch)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_AGENT_ID")}
    env["DAGON_HOME"] = str(home)
    config = load_agent_config(config_file=None, env=env, flags=flags)

    def connect(will: Will) -> Transport:
        return MqttTransport(url, client_id=f"dagon-agent-{config.agent_id}", will=will, protocol="3.1.1")

    # Same home as the in-process coordinator: the agent trusts its key with no enrolment.
    signer, trust = (None, None) if insecure else await asyncio.to_thread(agent_keys, home)
    runtimes = await select_runtimes(config.runtimes, home=config.home, scratch=config.scratch)
    agent = Agent(config=config, connect=connect, runtimes=runtimes, signer=signer, trust=trust, insecure=insecure)
    return await stack.enter_async_context(agent)
