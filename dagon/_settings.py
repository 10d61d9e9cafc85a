"""Where the facade finds its settings: ``DAGON_BROKER`` and ``DAGON_HOME``.

Precedence everywhere: explicit argument / CLI flag, then environment, then default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dagon.agent import default_home

__all__ = ["broker_from_env", "dagon_home", "insecure_from_env"]


def dagon_home(env: Mapping[str, str] | None = None) -> Path:
    """``$DAGON_HOME``, else ``$XDG_STATE_HOME/dagon``, else ``~/.local/state/dagon``.

    The same rule the agent uses (one definition, in :mod:`dagon.agent`), so the
    embedded agent and the CLI always agree on where local state lives.
    """
    return default_home(os.environ if env is None else env)


def broker_from_env(broker: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The broker URL to use: the argument, else ``$DAGON_BROKER``, else None (embedded)."""
    if broker:
        return broker
    env = os.environ if env is None else env
    return env.get("DAGON_BROKER") or None


def insecure_from_env(insecure: bool | None, env: Mapping[str, str] | None = None) -> bool:
    """The argument when given, else whether ``$DAGON_INSECURE`` is set to 1/true/yes."""
    if insecure is not None:
        return insecure
    env = os.environ if env is None else env
    return env.get("DAGON_INSECURE", "").strip().lower() in ("1", "true", "yes")
