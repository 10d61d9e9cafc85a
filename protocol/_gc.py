"""The cyclic garbage collector, tuned for a long-lived message loop (the coordinator, the agent).

CPython's defaults (a young collection every 700 allocations, a full one when the old generation
has grown by a quarter) are made for short scripts. A coordinator keeps every task of its runs
in memory, so each full collection walks all of them, and the modules, code objects and
configuration loaded at start (hundreds of thousands of objects that never die) on top: measured
in ``benchmarks/dashboard.py``-style runs of 3,000 no-op tasks, the collector took 20-50 µs of
the coordinator's ~300 µs per task, most of it in full collections of 50-80 ms each.

:func:`tune_gc` does what long-running Python servers do:

* ``gc.freeze()`` once, at start: what is alive then moves to a permanent generation that no
  collection walks again (it is never garbage: modules, classes, the configuration);
* a young-generation threshold of ``YOUNG`` allocations instead of 700: as many objects are
  examined per allocation, but far fewer collections run and far fewer short-lived objects
  survive into the older generations, which is what makes full collections frequent.

Memory is reclaimed by reference counting as before; only reference cycles wait a little longer.
``DAGON_GC=default`` keeps Python's own settings (an embedding program that tunes its own).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Final

from dagon.protocol._errors import ConfigError

__all__ = ["YOUNG", "tune_gc"]

YOUNG: Final = 20_000  # allocations between young collections (CPython: 700)
_MODES: Final = ("tuned", "default")
_tuned = False


def tune_gc(env: Mapping[str, str] | None = None) -> bool:
    """Tune the collector for this process, once (later calls do nothing); returns whether it did.

    Raises:
        ConfigError: ``DAGON_GC`` is neither ``tuned`` nor ``default``.
    """
    global _tuned
    mode = (os.environ if env is None else env).get("DAGON_GC", "tuned").strip().lower() or "tuned"
    if mode not in _MODES:
        raise ConfigError(f"DAGON_GC={mode!r}: expected 'tuned' (the default) or 'default' (Python's own settings)")
    if mode == "default" or _tuned:
        return False
    _tuned = True
    gc.collect()  # what is garbage now is not frozen
    gc.freeze()
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG), *older)
    return True
