"""What this machine is: the agent's announced capabilities."""

from __future__ import annotations

import ipaddress
import platform
import socket
from collections.abc import Sequence
from pathlib import Path

import psutil

from dagon.agent._config import AgentConfig
from dagon.agent.sensors._devices import find_devices
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


def interface_addresses() -> tuple[str, ...]:
    """This host's IPv4 and IPv6 addresses, loopback and link-local ones left out (they name no host)."""
    found: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = entry.address.split("%", 1)[0]
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local) and address not in found:
                found.append(address)
    return tuple(found)


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
        addresses=(*config.addresses, *(a for a in interface_addresses() if a not in config.addresses)),
        slots=config.slots,
        prefetch=config.queue_depth,
        version=_version(),
        devices=find_devices(extra=config.devices) if config.detect_devices else tuple(dict.fromkeys(config.devices)),
    )
