"""What a run id may look like: it names directories on every agent, a relay directory, MQTT
topic levels and run store rows, so a client's submission must not choose ``../../x``,
``a/b`` or a NUL. Run ids made by dagon (``<workflow>-<UTC stamp>-<hex>``) always pass."""

from __future__ import annotations

import re
from typing import Final

from dagon.core._errors import ValidationError

__all__ = ["RUN_ID_RE", "check_run_id"]

RUN_ID_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_run_id(run: str) -> None:
    """Raises:
    ValidationError: ``run`` is not 1-128 letters, digits, ``.``, ``_``, ``-`` starting with a
        letter, digit or ``_`` (no ``/``, no ``..``, no control characters).
    """
    if not RUN_ID_RE.fullmatch(run) or ".." in run:
        raise ValidationError(
            f"run id {run[:80]!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', starting with a"
            " letter, digit or '_' (it names directories and topics)"
        )
