"""Network namespaces as separate hosts: a bridge we create, one namespace per host.

Safety (ENVIRONMENT.md): everything lives on a private 10.77.X.0/24 subnet of a
bridge created here, which also has an address in the root namespace, so no
packet is routed off the machine. No firewall rule is touched. Everything is
removed by name in ``close()`` — they are ours (random suffix), never others'.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


@dataclass
class Hosts:
    """``count`` hosts ``10.77.X.11``, ``.12``, … on a bridge that is ``10.77.X.1`` in the root namespace."""

    count: int
    suffix: str = field(default_factory=lambda: f"{random.randrange(16**4):04x}")
    subnet: int = field(default_factory=lambda: random.randrange(100, 200))
    namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"dgbr{self.suffix}"

    @property
    def gateway(self) -> str:
        return f"10.77.{self.subnet}.1"

    def address(self, i: int) -> str:
        return f"10.77.{self.subnet}.{11 + i}"

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[i]]

    def open(self) -> Hosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(self.count):
                ns, outside = f"dgns{self.suffix}{i}", f"dgv{self.suffix}{i}"
                _ip("netns", "add", ns)
                self.namespaces.append(ns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for ns in self.namespaces:  # deleting a namespace deletes its veth pair
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
        self.namespaces.clear()
        subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)
