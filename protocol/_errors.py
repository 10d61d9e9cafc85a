"""The exception tree shared by every dagon package.

It lives in ``dagon.protocol`` because this is the one package both the
coordinator side (``dagon.core``) and the agent side (``dagon.agent``) import.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DagonError",
    "ProtocolError",
    "TransportError",
]


class DagonError(Exception):
    """Root of every error dagon raises on purpose."""


class ConfigError(DagonError):
    """A configuration value is missing or wrong; the message says which and how to fix it."""


class ProtocolError(DagonError):
    """A message could not be decoded or does not follow the wire contract.

    Attributes:
        reason: a short machine-friendly label (``"oversize"``, ``"unknown_op"``, …)
            used as a metric label.
    """

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class TransportError(DagonError):
    """The message transport (MQTT broker connection) failed."""
