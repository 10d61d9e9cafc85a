"""Test keys: one coordinator key pair and one agent key pair for the whole session.

Components under test are built secure, as in production; only tests about
``--insecure`` itself run without keys.
"""

from __future__ import annotations

from typing import Any

from dagon.core import CoordinatorTrust
from dagon.protocol import KeyRing, Signer

COORDINATOR = Signer.generate()
AGENT = Signer.generate()


def coordinator_security() -> dict[str, Any]:
    """``Coordinator`` keyword arguments: sign with COORDINATOR, pin agents on first sight."""
    return {"signer": COORDINATOR, "trust": CoordinatorTrust(clients=[COORDINATOR.public_key])}


def agent_security() -> dict[str, Any]:
    """``Agent`` keyword arguments: sign with AGENT, obey only COORDINATOR."""
    return {"signer": AGENT, "trust": KeyRing([COORDINATOR.public_key])}
