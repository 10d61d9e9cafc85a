"""Test devices: the example's simulated Arduino (a pty at 9600 baud), IIO sysfs trees, an SMBus fake."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


arduino = _load("edge_fog_arduino", ROOT / "examples" / "edge-fog" / "arduino.py")
SimulatedArduino: Any = arduino.SimulatedArduino
dht_line: Any = arduino.dht_line


def iio_tree(root: Path, index: int, name: str, files: dict[str, str]) -> Path:
    """``root/iio:deviceN`` with a ``name`` and channel files, as the kernel lays them out."""
    device = root / f"iio:device{index}"
    device.mkdir(parents=True)
    (device / "name").write_text(name + "\n")
    for key, value in files.items():
        (device / key).write_text(value + "\n")
    return device


class FakeSMBus:
    """A stand-in for ``smbus2.SMBus`` (its documented methods) — this VM has no I²C bus, and its kernel
    has no ``i2c-stub`` module to make one. Registers are a dict per address."""

    def __init__(self, registers: dict[int, dict[int, int]]) -> None:
        self.registers = registers
        self.closed = False
        self.writes: list[tuple[int, int | None, list[int]]] = []

    def _chip(self, addr: int) -> dict[int, int]:
        if addr not in self.registers:
            raise OSError(121, "Remote I/O error")  # what the kernel answers for a missing device (EREMOTEIO)
        return self.registers[addr]

    def read_byte(self, i2c_addr: int) -> int:
        return self._chip(i2c_addr).get(0, 0)

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        chip = self._chip(i2c_addr)
        return [chip.get(register + i, 0) for i in range(length)]

    def write_byte(self, i2c_addr: int, value: int) -> None:
        self._chip(i2c_addr)
        self.writes.append((i2c_addr, None, [value]))

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        self._chip(i2c_addr)[register] = value
        self.writes.append((i2c_addr, register, [value]))

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None:
        chip = self._chip(i2c_addr)
        for i, b in enumerate(data):
            chip[register + i] = b
        self.writes.append((i2c_addr, register, list(data)))

    def close(self) -> None:
        self.closed = True


def thread_parser(line: str) -> dict[str, Any] | None:
    """A user parser that says which thread ran it."""
    import threading

    return {"thread": threading.current_thread().name, "length": len(line)} if line else None


def fds_on(path: str) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if str(fd.readlink()) == path:
                count += 1
        except OSError:
            continue
    return count
