"""What a runtime returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dagon.protocol import ResultStatus

__all__ = ["Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one execution ended, as seen by the runtime."""

    status: ResultStatus
    exit_code: int | None
    cpu_time: float = 0.0
    max_rss: int = 0
    error: str = ""
    stderr_tail: str = ""
    value: Any = None
