"""Raspberry Pi 5 PMIC rails through ``vcgencmd pmic_read_adc``.

Its output has one line per channel, currents and voltages of the same rail
sharing a name prefix::

       3V7_WL_SW_A current(0)=0.00390372A
       ...
       3V7_WL_SW_V volt(8)=3.71020300V

Power is the sum over rails of V x A (rails with only one of the two are ignored).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil

from dagon.agent.power._base import PowerReading, PowerSource

__all__ = ["PmicSource", "parse_pmic_adc"]

log = logging.getLogger(__name__)

_LINE = re.compile(r"^\s*(?P<rail>\S+?)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-+0-9.eE]+)[AV]\s*$")


def parse_pmic_adc(text: str) -> dict[str, float]:
    """Watts per rail from ``vcgencmd pmic_read_adc`` output."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        (amps if m["kind"] == "A" else volts)[m["rail"]] = float(m["value"])
    return {rail: volts[rail] * amps[rail] for rail in sorted(amps.keys() & volts.keys())}


class PmicSource(PowerSource):
    """Runs ``vcgencmd pmic_read_adc`` (a child process per reading; a few ms on a Pi 5)."""

    name = "pmic"

    def __init__(self, command: str = "vcgencmd") -> None:
        self._command = command

    @staticmethod
    def available(command: str = "vcgencmd") -> bool:
        return shutil.which(command) is not None

    async def read(self, now: float, *, cpu_util: float) -> PowerReading | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._command, "pmic_read_adc", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            out, _ = await proc.communicate()
        except OSError as exc:
            log.warning("cannot run %s pmic_read_adc: %s", self._command, exc)
            return None
        rails = parse_pmic_adc(out.decode(errors="replace"))
        if proc.returncode != 0 or not rails:
            return None
        return PowerReading(self.name, sum(rails.values()), True, now, rails)
