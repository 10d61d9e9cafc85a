"""``dagon gc``: remove leftovers of finished runs from the agents' scratch roots.

Design: only the coordinator's run store knows which runs are finished, and only
agents may touch their scratch roots, so ``dagon gc`` runs where the coordinator's
``$DAGON_HOME`` is (its store and its signing key), reads the finished runs, and
sends every online agent one signed ``DeleteData(runs=…)`` on its task topic.
Agents verify it like any assignment (an unsigned or foreign one is refused),
delete ``<scratch>/<run>`` only for runs they run nothing of, and only inside
their scratch root. A local command on each agent machine would need the run
states anyway — from the coordinator — and a way to trust them; this reuses the
signed channel that already exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagon._keys import coordinator_signer
from dagon.core._config import run_store_path
from dagon.core._store import RunStore
from dagon.protocol import Announce, Codec, DeleteData, ProtocolError, RunId, topics
from dagon.protocol.transport import MqttAuth, MqttTransport

__all__ = ["finished_runs", "send_gc"]


def finished_runs(home: Path) -> list[RunId]:
    """Every run of the coordinator's store at ``home`` that is no longer running."""
    path = run_store_path(home)
    if not path.exists():
        return []
    store = RunStore(path)
    try:
        return [RunId(r.id) for r in store.list_runs(1_000_000) if r.state != "running"]
    finally:
        store.close()


async def send_gc(
    broker: str,
    home: Path,
    runs: list[RunId],
    retained: list[tuple[str, bytes]],
    *,
    coordinator_id: str = "main",
    insecure: bool = False,
    protocol: str = "5",
    auth: MqttAuth | None = None,
) -> list[str]:
    """Send ``DeleteData(runs=runs)`` to each agent announced in ``retained``; returns their ids.

    ``protocol`` and ``auth`` say how to reach the broker (MQTT version, TLS files and login).
    """
    reader = Codec(sender="cli")
    agents: list[str] = []
    for _, payload in retained:
        try:
            msg = reader.decode(payload).message
        except ProtocolError:
            continue
        if isinstance(msg, Announce):
            agents.append(msg.agent)
    if not runs or not agents:
        return []
    signer = None if insecure else coordinator_signer(home)
    codec = Codec(sender=f"coordinator/{coordinator_id}", signer=signer)
    client_id = f"dagon-gc-{os.getpid()}-{os.urandom(2).hex()}"
    async with MqttTransport(broker, client_id=client_id, protocol=protocol, auth=auth) as t:
        for agent in agents:
            await t.publish(topics.agent_tasks(agent), codec.encode(DeleteData(runs=tuple(runs)), to=f"agent/{agent}"))
    return agents
