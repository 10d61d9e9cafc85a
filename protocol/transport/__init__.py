"""Message transports: the one I/O seam of the protocol package.

This subpackage is the only place in dagon that talks to a broker; the rest of
``dagon.protocol`` stays free of I/O. The data plane's HTTP server and client
(``DataServer``, ``pull``, ``push``, ``covered_files``) load aiohttp, so they are
imported on first use: an idle agent never pays for them.
"""

from typing import TYPE_CHECKING, Any

from dagon.protocol.transport._base import Incoming, Transport, Will, topic_matches
from dagon.protocol.transport._channel import Channel, Received
from dagon.protocol.transport._datatypes import MANIFEST_FILE, PullStats, ServerStats
from dagon.protocol.transport._lazydata import LazyDataServer
from dagon.protocol.transport._login import MqttAuth
from dagon.protocol.transport._memory import MemoryHub, MemoryTransport
from dagon.protocol.transport._mqtt import BrokerURL, MqttTransport, redact_url
from dagon.protocol.transport._publisher import Publisher

if TYPE_CHECKING:
    from dagon.protocol.transport._dataplane import DataServer, covered_files, pull, push

__all__ = [
    "MANIFEST_FILE",
    "BrokerURL",
    "Channel",
    "DataServer",
    "Incoming",
    "LazyDataServer",
    "MemoryHub",
    "MemoryTransport",
    "MqttAuth",
    "MqttTransport",
    "Publisher",
    "PullStats",
    "Received",
    "ServerStats",
    "Transport",
    "Will",
    "covered_files",
    "pull",
    "push",
    "redact_url",
    "topic_matches",
]

_DATAPLANE = frozenset({"DataServer", "covered_files", "pull", "push"})


def __getattr__(name: str) -> Any:
    if name in _DATAPLANE:
        from dagon.protocol.transport import _dataplane

        return getattr(_dataplane, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
