"""The public JSON status of each agent, as one coordinator sees it (``dagon.agent-status/1``).

Published retained on ``dagon/v1/coordinator/{id}/agents/{agent}`` for people and
dashboards (``mosquitto_sub -t 'dagon/v1/#'``): online or not, runtimes, labels, free
slots, last seen. The coordinator publishes it because only the coordinator knows
admission; it publishes it only for agents it admitted (enrolled keys): a stranger's
announce is refused before it is decoded and must leave nothing on the broker (5,000
sybils must not become 5,000 retained documents). It is never read back: what the
coordinator believes comes from signed reports, not from documents anyone may replace.

Sans-IO: :meth:`AgentBoard.due` takes the engine's agents and the clock and returns the
documents to publish. A change of online state goes out at once; other changes (free
slots move with every dispatch) are looked for at most every :data:`CHANGE_INTERVAL`
seconds; an unchanged online agent is republished every :data:`REFRESH_INTERVAL` seconds
to move ``last_seen`` (heartbeats come every few seconds: republishing each would be noise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dagon.core._placement import AgentView
from dagon.protocol import SCHEMA_AGENT_STATUS, AgentId, encode_public, fingerprint, topics

__all__ = ["CHANGE_INTERVAL", "REFRESH_INTERVAL", "AgentBoard", "agent_status_doc"]

CHANGE_INTERVAL: Final = 1.0
REFRESH_INTERVAL: Final = 30.0


def agent_status_doc(view: AgentView, *, coordinator: str, reason: str, key: bytes) -> dict[str, Any]:
    """The ``dagon.agent-status/1`` document of one admitted agent."""
    caps = view.capabilities
    return {
        "schema": SCHEMA_AGENT_STATUS,
        "coordinator": coordinator,
        "agent": view.id,
        "admitted": True,
        "online": view.online,
        "reason": reason,
        "hostname": caps.hostname,
        "arch": caps.arch,
        "os": caps.os,
        "version": caps.version,
        "cpus": caps.cpus,
        "memory": caps.memory,
        "runtimes": list(caps.runtimes),
        "labels": dict(caps.labels),
        "devices": list(caps.devices),
        "slots": caps.slots,
        "running": len(view.inflight),
        "free_slots": max(0, caps.slots - len(view.inflight)) if view.online else 0,
        "last_seen": view.last_seen,
        "fingerprint": fingerprint(key) if key else None,
    }


@dataclass(slots=True)
class _Sent:
    at: float
    content: tuple[Any, ...]


class AgentBoard:
    """Which agent documents are due (see the module docstring).

    Args:
        coordinator: the coordinator's id (in topics and documents).
        key_of: the raw public key an agent is admitted with (``b""``: unknown).
    """

    def __init__(self, *, coordinator: str, key_of: Callable[[str], bytes] | None = None) -> None:
        self._coordinator = coordinator
        self._key_of = key_of
        self._sent: dict[AgentId, _Sent] = {}
        self._reasons: dict[AgentId, str] = {}
        self._urgent = False
        self._checked_at = float("-inf")

    def changed(self, agent: AgentId, online: bool, reason: str) -> None:
        """The engine said ``agent`` came or went, and why: its document is due at once."""
        self._reasons[agent] = reason
        self._urgent = True

    def due(self, agents: Mapping[AgentId, AgentView], now: float) -> tuple[list[tuple[str, bytes]], bool]:
        """``([(topic, payload)…], more)``: the documents to publish now, and whether to look again
        within :data:`CHANGE_INTERVAL` (changes are looked for at most that often: a drive pass per
        message must not compare every agent every time)."""
        if not self._urgent and now - self._checked_at < CHANGE_INTERVAL:
            return [], bool(agents)
        self._urgent = False
        self._checked_at = now
        out: list[tuple[str, bytes]] = []
        for agent, view in agents.items():
            reason = self._reasons.get(agent, "announced" if view.online else "")
            content = (view.online, reason, view.capabilities, len(view.inflight))
            sent = self._sent.get(agent)
            if sent is not None and sent.content == content and (now - sent.at < REFRESH_INTERVAL or not view.online):
                continue
            key = self._key_of(agent) if self._key_of is not None else b""
            doc = agent_status_doc(view, coordinator=self._coordinator, reason=reason, key=key)
            out.append((topics.coordinator_agent(self._coordinator, agent), encode_public(doc)))
            self._sent[agent] = _Sent(now, content)
        return out, False

    def published(self) -> list[str]:
        """The topics of every document published so far (to remove them when the coordinator stops)."""
        return [topics.coordinator_agent(self._coordinator, agent) for agent in self._sent]
