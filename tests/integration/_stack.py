"""In-process stacks for integration tests: a real Coordinator and real Agents.

Over a :class:`MemoryHub` (every message still goes through the real codec) or
over a real broker URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from _keys import agent_security, coordinator_security

import dagon
from dagon._keys import add_pin, agent_signer, coordinator_signer, enroll
from dagon.agent import Agent, Runtime, load_agent_config
from dagon.core import Coordinator, RunStore
from dagon.protocol import raw_public_key
from dagon.protocol.transport import MemoryHub, MqttAuth, MqttTransport, Transport, Will


def agent_config(
    tmp: Path, name: str, *, slots: int = 4, broker: str = "memory://", labels: str = "", telemetry: float | None = None
) -> object:
    flags: dict[str, object] = {"broker": broker, "id": name, "slots": slots, "scratch": str(tmp / name / "scratch")}
    if labels:
        flags["labels"] = labels
    if telemetry is not None:
        flags["telemetry_interval"] = telemetry
    return load_agent_config(config_file=None, env={"DAGON_HOME": str(tmp / name)}, flags=flags)


@contextlib.asynccontextmanager
async def memory_stack(
    hub: MemoryHub,
    tmp: Path,
    *,
    agents: int = 1,
    slots: int = 4,
    heartbeat_ttl: float = 15.0,
    runtimes: Sequence[Runtime] = (),
    telemetry: float | None = None,
) -> AsyncIterator[tuple[Coordinator, list[Agent]]]:
    store = RunStore(tmp / "runs.sqlite")
    try:
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await stack.enter_async_context(
                Coordinator(
                    connect=lambda will: hub.transport(will=will),
                    coordinator_id="test",
                    store=store,
                    heartbeat_ttl=heartbeat_ttl,
                    **coordinator_security(),
                )
            )
            started = []
            for i in range(agents):
                config = agent_config(tmp, f"agent{i}", slots=slots, telemetry=telemetry)

                def connect(will: Will) -> Transport:
                    return hub.transport(will=will)

                agent = Agent(config=config, connect=connect, runtimes=runtimes, **agent_security())  # type: ignore[arg-type]
                started.append(await stack.enter_async_context(agent))
            await coordinator.wait_for_agents(agents)
            yield coordinator, started
    finally:
        store.close()


@contextlib.asynccontextmanager
async def mqtt_agent(
    url: str, tmp: Path, name: str, *, slots: int = 4, protocol: str = "5", auth: MqttAuth | None = None
) -> AsyncIterator[Agent]:
    config = agent_config(tmp, name, slots=slots, broker=url)

    def connect(will: Will) -> Transport:
        return MqttTransport(url, client_id=f"dagon-agent-{name}", will=will, protocol=protocol, auth=auth)

    async with Agent(config=config, connect=connect, **agent_security()) as agent:  # type: ignore[arg-type]
        yield agent


def taskflow(*, extra: int = 0) -> dagon.Workflow:
    """The classic 5-task demo (A; B, C after A; D after B and C; E after D), plus
    ``extra`` independent tasks after A to spread work across agents."""
    wf = dagon.Workflow("taskflow")
    wf.shell("A", "mkdir -p output && echo from-A > output/f1.txt")
    wf.shell("B", "echo B > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt")
    wf.shell("C", "echo C > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt")
    wf.shell("D", "cat workflow:///B/f2.txt workflow:///C/f2.txt > f3.txt")
    wf.shell("E", "cat workflow:///D/f3.txt > result.txt")
    for i in range(extra):
        wf.shell(f"extra{i}", "sleep 0.2", after=["A"])
    return wf


def start_agent(
    url: str,
    tmp: Path,
    name: str,
    *,
    slots: int = 2,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """A ``dagon-agent`` process with its own home, enrolled with the coordinator key of ``tmp/client``.

    ``prefix`` runs it through another command (e.g. ``ip netns exec NS``).
    """
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    coordinator_signer(tmp / "client")  # what `dagon keys init` does
    enroll(home, tmp / "client" / "keys" / "coordinator.pub")  # what `dagon-agent enroll --yes` does
    pins = tmp / "client" / "keys" / "known_agents"
    if f"{name} " not in (pins.read_text() if pins.exists() else ""):  # what `dagon agents approve NAME` does
        add_pin(pins, name, raw_public_key(agent_signer(home).public_key))
    cmd = [
        *prefix, sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())",
        "--broker", url, "--id", name, "--slots", str(slots), "--scratch", str(home / "scratch"), *args,
    ]  # fmt: skip
    environ = dict(os.environ, DAGON_HOME=str(home), **(env or {}))
    with (home / "agent.log").open("wb") as log:
        return subprocess.Popen(cmd, env=environ, stdout=log, stderr=subprocess.STDOUT)


def hub_agent(hub: MemoryHub, tmp: Path, name: str, **flags: object) -> Agent:
    """An in-process agent on ``hub`` with its own home and scratch under ``tmp/name``; ``flags`` as
    ``dagon-agent``'s (e.g. ``host_id`` to act as another host, ``reachable=False``)."""
    config = load_agent_config(
        config_file=None,
        env={"DAGON_HOME": str(tmp / name)},
        flags={"id": name, "scratch": str(tmp / name / "scratch"), **flags},
    )
    return Agent(config=config, connect=lambda will: hub.transport(will=will), **agent_security())


async def retained_runs(url: str) -> dict[str, bytes]:
    """Every retained message under ``dagon/v1/runs/#`` on the broker (until quiet for 0.5 s)."""
    found: dict[str, bytes] = {}
    async with MqttTransport(url, client_id=f"count-{id(found)}") as reader:
        await reader.subscribe("dagon/v1/runs/#")
        messages = reader.messages()
        while True:
            try:
                async with asyncio.timeout(0.5):
                    msg = await anext(messages)
            except TimeoutError:
                break
            if msg.retain:
                found[msg.topic] = msg.payload
    return found
