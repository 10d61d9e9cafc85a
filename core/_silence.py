"""When the first online agent's heartbeat TTL runs out, without reading every agent on every pass.

A fleet's heartbeats wake the coordinator's drive loop hundreds of times a second, and the
engine's next deadline includes the earliest heartbeat deadline of all online agents: read from
every agent on every pass, that scan alone took 10 % of the coordinator's CPU with 500 agents
(benchmarks/fleet.py). :class:`SilenceWatch` scans at most every ``RESCAN`` seconds.

Invariant: a cached deadline can only be early — heartbeats move deadlines later, an agent that
comes online while none was is looked for at the next rescan — and one that has passed is scanned
again at once, so an early ``Tick`` happens once and finds nothing to do, never once per pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from dagon.core._placement import AgentView
from dagon.protocol import AgentId

__all__ = ["RESCAN", "SilenceWatch"]

RESCAN: Final = 1.0  # seconds between two scans of every agent's heartbeat deadline


class SilenceWatch:
    """The earliest end of an online agent's heartbeat TTL, scanned at most every :data:`RESCAN` s."""

    __slots__ = ("_scan",)

    def __init__(self) -> None:
        self._scan: tuple[float, float | None] | None = None  # (scanned at, earliest deadline)

    def due(self, agents: Mapping[AgentId, AgentView], ttl: float, now: float | None) -> float | None:
        """The earliest deadline (``None``: no agent to watch); ``now=None`` always scans, caching nothing."""
        scan = self._scan
        if now is not None and scan is not None and now - scan[0] < RESCAN and (scan[1] is None or scan[1] > now):
            if scan[1] is not None:
                return scan[1]
            return scan[0] + RESCAN if agents else None
        earliest: float | None = None
        for agent in agents.values():
            if agent.online:
                due = agent.last_seen + ttl
                earliest = due if earliest is None else min(earliest, due)
        if now is None:
            return earliest
        self._scan = (now, earliest)
        if earliest is None and agents:  # agents known, none online: look again soon
            return now + RESCAN
        return earliest
