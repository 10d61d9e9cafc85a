"""Data-plane names that cost no imports (the HTTP server and client live in ``_dataplane``,
which loads aiohttp: an idle agent does not need it until someone pulls from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["MANIFEST_FILE", "PullStats", "ServerStats", "server_url"]

MANIFEST_FILE: Final = "manifest.json"  # under a task's .dagon/: the producer's own manifest


def server_url(host: str, port: int, *, tls: bool) -> str:
    """The URL a data server listening on ``host:port`` is reached at."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


@dataclass
class ServerStats:
    requests: int = 0
    range_requests: int = 0
    refused: int = 0
    bytes_uploaded: int = 0


@dataclass
class PullStats:
    total: int = 0  # bytes listed for this pull (known once the listing arrived)
    files: int = 0
    bytes: int = 0  # bytes received over the network (resumed parts are not counted twice)
    seconds: float = 0.0
    retries: int = 0
    resumed: int = 0

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0
