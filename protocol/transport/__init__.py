"""Message transports: the one I/O seam of the protocol package.

This subpackage is the only place in dagon that talks to a broker; the rest of
``dagon.protocol`` stays free of I/O.
"""

from dagon.protocol.transport._auth import MqttAuth
from dagon.protocol.transport._base import Incoming, Transport, Will, topic_matches
from dagon.protocol.transport._dataplane import MANIFEST_FILE, DataServer, PullStats, covered_files, pull, push
from dagon.protocol.transport._memory import MemoryHub, MemoryTransport
from dagon.protocol.transport._mqtt import BrokerURL, MqttTransport, redact_url
from dagon.protocol.transport._publisher import Publisher

__all__ = [
    "MANIFEST_FILE",
    "DataServer",
    "PullStats",
    "covered_files",
    "pull",
    "push",
    "BrokerURL",
    "Incoming",
    "MemoryHub",
    "MemoryTransport",
    "MqttAuth",
    "MqttTransport",
    "Publisher",
    "Transport",
    "Will",
    "redact_url",
    "topic_matches",
]
