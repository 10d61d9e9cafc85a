"""What this machine is: the agent's announced capabilities."""

from __future__ import annotations

import platform
import socket
from collections.abc import Sequence
from pathlib import Path

import psutil

from dagon.agent._config import AgentConfig
from dagon.protocol import Capabilities
from dagon.protocol._version import __version__

__all__ = ["capabilities", "host_id"]

RUNTIMES = ("process", "python")


def _version() -> str:
    return __version__  # not importlib.metadata: that costs an idle agent 1.6 MB


def host_id() -> str:
    """Identifies the machine (agents on one host can link each other's files)."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(candidate).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}-{boot}"


def capabilities(config: AgentConfig, extra_runtimes: Sequence[str] = ()) -> Capabilities:
    """What this agent announces: host facts, runtimes, labels, slots and version."""
    return Capabilities(
        hostname=socket.gethostname(),
        host_id=config.host_id or host_id(),
        arch=platform.machine(),
        os=platform.system().lower(),
        cpus=psutil.cpu_count() or 1,
        memory=int(psutil.virtual_memory().total),
        # python tasks run inside the agent process, which cannot switch users
        runtimes=(*(r for r in RUNTIMES if not (config.run_as and r == "python")), *extra_runtimes),
        labels=dict(config.labels),
        slots=config.slots,
        prefetch=config.queue_depth,
        version=_version(),
    )
