"""Serving a private Prometheus registry over HTTP (loopback unless told otherwise)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from dagon.protocol import ConfigError

__all__ = ["serve_metrics"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def serve_metrics(registry: object, *, port: int, host: str = "127.0.0.1") -> Iterator[int]:
    """Serve ``registry`` at ``http://host:port/metrics`` while the block runs; yields the port.

    Raises:
        ConfigError: prometheus-client is missing or the port cannot be bound.
    """
    try:
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise ConfigError("--metrics-port needs prometheus-client: pip install 'dagon-engine[metrics]'") from exc
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)  # type: ignore[arg-type]
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}; choose another --metrics-port") from exc
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
