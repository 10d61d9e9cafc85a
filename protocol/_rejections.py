"""Counting and rate-limited logging of rejected input, shared by every receiver."""

from __future__ import annotations

import logging
import time
from collections import Counter

__all__ = ["Rejections"]


class Rejections:
    """Counts rejected messages by reason; logs at most one line per reason per ``interval``.

    Args:
        logger: where warnings go.
        interval: seconds between two log lines for the same reason.
    """

    def __init__(self, logger: logging.Logger, *, interval: float = 1.0) -> None:
        self.counts: Counter[str] = Counter()
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}

    def __call__(self, source: str, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._last.get(reason, -self._interval) >= self._interval:
            self._last[reason] = now
            self._logger.warning(
                "rejected message from %s (%s): %s [%d so far]", source, reason, detail, self.counts[reason]
            )

    def total(self) -> int:
        return sum(self.counts.values())
