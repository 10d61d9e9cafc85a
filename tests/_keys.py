"""Test keys: one coordinator key pair and one agent key pair for the whole session.

Components under test are built secure, as in production; only tests about
``--insecure`` itself run without keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagon.core import CoordinatorTrust
from dagon.protocol import KeyRing, Signer

COORDINATOR = Signer.generate()
AGENT = Signer.generate()


def coordinator_security() -> dict[str, Any]:
    """``Coordinator`` keyword arguments: sign with COORDINATOR, admit agents signing with AGENT
    (enrolled for every id, as the agent key of the coordinator's own home is)."""
    trust = CoordinatorTrust(clients=[COORDINATOR.public_key], agent_keys=[AGENT.public_key])
    return {"signer": COORDINATOR, "trust": trust}


def agent_security() -> dict[str, Any]:
    """``Agent`` keyword arguments: sign with AGENT, obey only COORDINATOR."""
    return {"signer": AGENT, "trust": KeyRing([COORDINATOR.public_key])}


def admit(coordinator_home: Path, agent: str, agent_home: Path) -> None:
    """Enrol ``agent`` (its key in ``agent_home``) with the coordinator of ``coordinator_home``: what
    ``dagon agents approve`` (or ``dagon keys trust-agent``) does there."""
    from dagon._keys import add_pin, agent_signer, keys_dir
    from dagon.protocol import raw_public_key

    pins = keys_dir(coordinator_home) / "known_agents"
    if f"{agent} " not in (pins.read_text() if pins.exists() else ""):
        add_pin(pins, agent, raw_public_key(agent_signer(agent_home).public_key))
