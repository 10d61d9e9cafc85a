"""The ``workflow://`` reference syntax, shared by the coordinator (which finds
references) and agents (which rewrite them to staged paths)."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["NAME_RE", "REFERENCE_RE", "STOP_CHARS"]

# A reference ends at whitespace, a quote, a backtick or one of ;|&()<>.
STOP_CHARS: Final = r"\s'\"`;|&()<>"
NAME_RE: Final = re.compile(rf"[^{STOP_CHARS}/\x00-\x1f\x7f]+")
REFERENCE_RE: Final = re.compile(rf"workflow://([^{STOP_CHARS}/]*)/([^{STOP_CHARS}/]*)(/[^{STOP_CHARS}]*)?")
