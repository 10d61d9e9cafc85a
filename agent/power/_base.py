"""The power-source contract: one reading, and whether it was measured or modelled."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = ["PowerReading", "PowerSource"]


@dataclass(frozen=True, slots=True)
class PowerReading:
    """Power drawn by the node, averaged over the time since the previous reading.

    Attributes:
        source: name of the source (``rapl``, ``hwmon``, ``pmic``, ``ina2xx``, ``mqtt``,
            ``prometheus``, ``model``).
        watts: power in watts.
        measured: ``True`` for a sensor or meter, ``False`` for a model estimate.
        ts: unix time of the reading.
        detail: per-rail / per-zone watts when the source has them.
    """

    source: str
    watts: float
    measured: bool
    ts: float
    detail: dict[str, float] = field(default_factory=dict)


class PowerSource(abc.ABC):
    """A way to learn the node's power draw; :meth:`read` is cheap and never raises for a missing value."""

    name: ClassVar[str]
    measured: ClassVar[bool] = True

    @abc.abstractmethod
    async def read(self, now: float, *, cpu_util: float) -> PowerReading | None:
        """Return the current reading, or ``None`` when none is available yet.

        Args:
            now: unix time of the sample.
            cpu_util: whole-node CPU utilisation in 0…1 (used by models).
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the source holds."""
