"""What the coordinator knows of its agents' nodes: the latest telemetry sample per agent."""

from __future__ import annotations

import math

from dagon.protocol import AgentId, ProtocolError, Telemetry

__all__ = ["AgentTelemetry", "check_telemetry"]

_MAX_PERCENT = 100.5  # utilisation rounded by the sampler may overshoot 100 a hair


def _bad(msg: Telemetry, what: str, value: object) -> ProtocolError:
    return ProtocolError(f"telemetry of agent {msg.agent!r}: {what} = {value!r} is out of range", reason="value")


def check_telemetry(msg: Telemetry) -> None:
    """Reject a sample whose figures cannot be true (NaN, negative, over 100 %).

    Raises:
        ProtocolError: with ``reason="value"`` (counted as a protocol rejection).
    """
    figures: dict[str, float] = {
        "sampled_at": msg.sampled_at,
        "disk_read_bps": msg.disk_read_bps,
        "disk_write_bps": msg.disk_write_bps,
        "net_recv_bps": msg.net_recv_bps,
        "net_sent_bps": msg.net_sent_bps,
        "energy_joules_total": msg.energy_joules_total,
        "memory_used": msg.memory_used,
        "memory_total": msg.memory_total,
        "running": msg.running,
    }
    if msg.power_watts is not None:
        figures["power_watts"] = msg.power_watts
    for name, value in figures.items():
        if not math.isfinite(value) or value < 0:
            raise _bad(msg, name, value)
    percents = {
        "cpu_percent": msg.cpu_percent,
        **{f"per_core_percent[{i}]": v for i, v in enumerate(msg.per_core_percent)},
    }
    for name, value in percents.items():
        if not (0 <= value <= _MAX_PERCENT):  # also false for NaN
            raise _bad(msg, name, value)
    if any(not math.isfinite(v) or v < 0 for v in msg.load_avg):
        raise _bad(msg, "load_avg", msg.load_avg)
    if any(not math.isfinite(v) for v in msg.temperatures.values()):
        raise _bad(msg, "temperatures", msg.temperatures)


class AgentTelemetry:
    """The latest checked sample of every agent (a sample older than the stored one is ignored)."""

    def __init__(self) -> None:
        self.latest: dict[AgentId, Telemetry] = {}
        self.samples = 0

    def take(self, msg: Telemetry) -> bool:
        """Check and keep ``msg``; ``False`` when it is older than the one already kept.

        Raises:
            ProtocolError: the sample's figures are out of range.
        """
        check_telemetry(msg)
        current = self.latest.get(msg.agent)
        if current is not None and current.sampled_at > msg.sampled_at:
            return False
        self.latest[msg.agent] = msg
        self.samples += 1
        return True
