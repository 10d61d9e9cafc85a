"""``dagon-agent doctor``: what this device can do and what is wrong, one row per concern.

Every check is read-only: nothing is created (no key, no agent id, no scratch directory), no
device is opened, and on the broker it reads the retained coordinator status and asks the
online coordinators for their clock (nothing else). A row is ``ok``, ``warn`` (works, but look
at it), ``fail`` (the agent will not work as configured) or ``info``.

Clock skew is checked against every online coordinator, NTP-style (see :mod:`dagon.agent._clock`):
with this agent's key and id (an agent that ran here before), a signed ``TimeQuery`` goes to each
coordinator's inbox and its signed answer on the agent's control topic gives the offset between the
clocks to within half the round trip. A Raspberry Pi has no real-time clock and boots with the time
it last saved; signed tasks outside the freshness window are refused, so an offset beyond it is a
failure and one beyond :data:`~dagon.agent._clock.CLOCK_WARN` a warning. Without a key, an id or an
answer (an agent not approved yet), the weaker check remains: a coordinator whose retained status
says it started *after* this machine's "now" proves this clock behind by at least that much. Whether
the system clock is synchronised (systemd-timesyncd's flag or ``timedatectl``) is shown too.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from dagon.agent._clock import CLOCK_WARN, ClockSample, CoordinatorClock
from dagon.agent._config import AgentConfig
from dagon.agent.power import detect_power_source
from dagon.agent.runtimes import detect_runtimes
from dagon.agent.sensors._devices import find_devices
from dagon.protocol import (
    DEFAULT_FRESHNESS,
    AgentId,
    Codec,
    ConfigError,
    DagonError,
    ProtocolError,
    Signer,
    TimeAnswer,
    Trust,
    topics,
)
from dagon.protocol.transport import MqttAuth, MqttTransport, Transport, redact_url

__all__ = ["Check", "Identity", "Status", "broker_checks", "local_checks", "render_table", "run_doctor"]

Status = Literal["ok", "warn", "fail", "info"]
KNOWN_ARCHES: Final = ("aarch64", "armv7l", "x86_64")
MIN_FREE: Final = 100 * 2**20
LOW_FREE: Final = 2**30
BROKER_TIMEOUT: Final = 5.0
RETAINED_WAIT: Final = 1.5  # seconds to collect the broker's retained coordinator status
ANSWER_WAIT: Final = 3.0  # seconds to wait for the coordinators' clock answers


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the doctor speaks as to measure the clock: the agent's id, key and trusted coordinator keys."""

    agent: str
    signer: Signer
    trust: Trust


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the report."""

    name: str
    status: Status
    detail: str


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _platform() -> list[Check]:
    checks = []
    version = ".".join(map(str, sys.version_info[:3]))
    py_ok = sys.version_info >= (3, 11)
    checks.append(Check("python", "ok" if py_ok else "fail", f"{version} ({sys.executable})"))
    arch = platform.machine()
    model = ""
    try:
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
    except OSError:
        pass
    detail = f"{arch}, {platform.system()} {platform.release()}" + (f", {model}" if model else "")
    if arch in KNOWN_ARCHES:
        checks.append(Check("platform", "ok", detail))
    else:
        checks.append(Check("platform", "warn", f"{detail} (tested: {', '.join(KNOWN_ARCHES)})"))
    return checks


def _mount_of(path: Path) -> tuple[str, str]:
    """(mount point, file system type) holding ``path``, from /proc/mounts."""
    best = ("/", "?")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    text = str(path)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (text == point or text.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best


def _scratch(scratch: Path) -> Check:
    existing = scratch
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError as exc:
        return Check("scratch", "fail", f"{scratch}: {exc}")
    point, fstype = _mount_of(existing.resolve())
    detail = f"{scratch} on {fstype} ({point}): {_size(usage.free)} free of {_size(usage.total)}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check("scratch", "fail", f"{detail}; {existing} is not writable by uid {os.geteuid()}")
    if not scratch.exists():
        detail += " (created at first start)"
    if usage.free < MIN_FREE:
        return Check("scratch", "fail", f"{detail}; under {_size(MIN_FREE)} free: tasks will fail to write")
    if fstype in ("tmpfs", "ramfs"):
        return Check("scratch", "warn", f"{detail}; in memory: outputs vanish on reboot and use RAM")
    if usage.free < LOW_FREE:
        return Check("scratch", "warn", f"{detail}; low on space")
    return Check("scratch", "ok", detail)


async def _runtimes(config: AgentConfig) -> Check:
    found = await detect_runtimes()
    builtin = ["process", "python", "sensor", "actuator"]
    if config.run_as:
        builtin.remove("python")
    if config.runtimes is None:
        return Check("runtimes", "ok", ", ".join(builtin + found) + " (containers detected)")
    missing = [r for r in config.runtimes if r not in found]
    offered = ", ".join(builtin + list(config.runtimes))
    if missing:
        return Check("runtimes", "fail", f"{offered}; configured but not working here: {', '.join(missing)}")
    return Check("runtimes", "ok", offered)


async def _power(config: AgentConfig) -> Check:
    try:
        source = detect_power_source(
            config.power_source, idle_watts=config.power_idle_watts, max_watts=config.power_max_watts,
            mqtt_topic=config.power_mqtt_topic, prometheus_url=config.power_prometheus_url,
            prometheus_query=config.power_prometheus_query,
        )  # fmt: skip
    except ConfigError as exc:
        return Check("power", "fail", str(exc))
    if source is None:
        return Check("power", "info", "off (power_source = off): no energy per task")
    try:
        if not source.measured:
            return Check("power", "warn", f"{source.name}: modelled from CPU use, not measured (no meter found)")
        return Check("power", "ok", f"{source.name} (measured)")
    finally:
        await source.aclose()


def _sensors(config: AgentConfig) -> Check:
    try:
        devices = find_devices(extra=config.devices) if config.detect_devices else tuple(config.devices)
    except ConfigError as exc:
        return Check("sensors", "fail", str(exc))
    missing = []
    if any(d.startswith("serial:") for d in devices) and not _importable("serial_asyncio"):
        missing.append("pyserial-asyncio")
    if any(d.startswith("i2c:") for d in devices) and not _importable("smbus2"):
        missing.append("smbus2")
    shown = ", ".join(devices) or "none found (serial ports, IIO devices, I²C buses)"
    if missing:
        return Check("sensors", "warn", f"{shown}; install {' and '.join(missing)}: pip install 'dagon-engine[device]'")
    return Check("sensors", "ok" if devices else "info", shown)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _ntp() -> tuple[bool | None, str]:
    if Path("/run/systemd/timesync/synchronized").exists():
        return True, "synchronised (systemd-timesyncd)"
    tool = shutil.which("timedatectl")
    if tool is not None:
        try:
            out = subprocess.run([tool, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout.strip()  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out in ("yes", "no"):
            return out == "yes", "synchronised (NTP)" if out == "yes" else "NOT synchronised (timedatectl)"
        return None, "synchronisation unknown (timedatectl did not answer: no systemd running?)"
    return None, "synchronisation unknown (no timedatectl)"


async def local_checks(config: AgentConfig) -> list[Check]:
    """The checks that need nothing but this machine: runtimes, power, sensors, scratch, python, platform."""
    checks = [await _runtimes(config), await _power(config)]
    checks.append(await asyncio.to_thread(_sensors, config))
    checks.append(await asyncio.to_thread(_scratch, config.scratch))
    return [*checks, *_platform()]


async def _measure(transport: Transport, identity: Identity, coordinators: Sequence[str]) -> list[ClockSample]:
    """Ask each coordinator for its clock (signed queries); the samples of the answers that came in time."""
    clock = CoordinatorClock(AgentId(identity.agent))
    codec = Codec(sender=f"agent/{identity.agent}", signer=identity.signer, trust=identity.trust)
    await transport.subscribe(topics.agent_control(identity.agent))
    messages = transport.messages()
    for coordinator in coordinators:
        await transport.publish(topics.coordinator_inbox(coordinator), codec.encode(clock.query(coordinator)))
    samples: list[ClockSample] = []
    try:
        async with asyncio.timeout(ANSWER_WAIT):
            async for msg in messages:
                try:
                    answer = codec.decode(msg.payload, limit=topics.payload_limit(msg.topic)).message
                except ProtocolError:
                    continue  # e.g. signed by a key this agent does not trust: no measurement
                if isinstance(answer, TimeAnswer) and (sample := clock.answer(answer)) is not None:
                    samples.append(sample)
                    if len(samples) == len(coordinators):
                        break
    except TimeoutError:
        pass
    return samples


def _clock_check(samples: Sequence[ClockSample], synced: bool | None, sync_text: str) -> Check:
    worst = max(samples, key=lambda s: abs(s.offset))
    said = "; ".join(s.describe() for s in sorted(samples, key=lambda s: s.coordinator))
    if abs(worst.offset) > DEFAULT_FRESHNESS:
        return Check("clock", "fail", f"{sync_text}; {said}: signed tasks (valid ±{DEFAULT_FRESHNESS:.0f} s)"
                     " will be refused — set the clock (NTP)")  # fmt: skip
    if abs(worst.offset) > CLOCK_WARN:
        return Check("clock", "warn", f"{sync_text}; {said} (over {CLOCK_WARN:.0f} s: set the clock, NTP)")
    return Check("clock", "ok" if synced is not False else "warn", f"{sync_text}; {said}")


async def broker_checks(
    config: AgentConfig, *, now: Callable[[], float] = time.time, identity: Identity | None = None
) -> list[Check]:
    """Broker reachable (a real connection), coordinators online, and the clock against them
    (measured when ``identity`` is given and a coordinator answers; see the module docstring)."""
    synced, sync_text = await asyncio.to_thread(_ntp)
    if not config.broker:
        return [
            Check("broker", "fail", "none configured: set broker in the config file or DAGON_BROKER"),
            Check("clock", "ok" if synced else "warn", sync_text),
        ]
    url = redact_url(config.broker)
    try:
        auth = MqttAuth.load(ca_file=config.mqtt_ca, cert_file=config.mqtt_cert, key_file=config.mqtt_key,
                             username=config.mqtt_username, password_file=config.mqtt_password_file)  # fmt: skip
        transport = MqttTransport(config.broker, client_id=f"dagon-doctor-{os.getpid()}-{os.urandom(2).hex()}",
                                  protocol=config.mqtt_protocol, auth=auth, connect_timeout=BROKER_TIMEOUT)  # fmt: skip
    except DagonError as exc:
        return [Check("broker", "fail", f"{url}: {exc}"), Check("clock", "ok" if synced else "warn", sync_text)]
    began = time.monotonic()
    coordinators: dict[str, dict[str, Any]] = {}
    samples: list[ClockSample] = []
    try:
        async with transport:
            connected = time.monotonic() - began
            await transport.subscribe(topics.all_coordinator_status())
            messages = transport.messages()
            try:
                async with asyncio.timeout(RETAINED_WAIT):
                    async for msg in messages:
                        try:
                            doc = json.loads(msg.payload)
                        except ValueError:
                            continue
                        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                            coordinators[doc["id"]] = doc
            except TimeoutError:
                pass
            online = sorted(c for c, d in coordinators.items() if d.get("online"))
            if identity is not None and online:
                samples = await _measure(transport, identity, online)
    except DagonError as exc:
        return [Check("broker", "fail", f"{url}: {exc}"), Check("clock", "ok" if synced else "warn", sync_text)]
    checks = [Check("broker", "ok", f"{url}: connected in {connected * 1000:.0f} ms")]
    if samples:
        checks.append(Check("coordinators", "ok", f"online: {', '.join(online)}"))
        return [*checks, _clock_check(samples, synced, sync_text)]
    if online:
        why = "no agent key and id here yet" if identity is None else "no coordinator answered (agent approved?)"
        sync_text += f"; not measured ({why})"
    checks.append(
        Check("coordinators", "ok" if online else "warn",
              f"online: {', '.join(online)}" if online else "none online on this broker right now")
    )  # fmt: skip
    ahead = [
        (float(d["since"]) - now(), c)
        for c, d in coordinators.items()
        if d.get("online") and isinstance(d.get("since"), int | float)
    ]
    behind, who = max(ahead, default=(0.0, ""))
    if behind > DEFAULT_FRESHNESS:
        checks.append(Check("clock", "fail", f"{sync_text}; behind coordinator {who} by at least {behind:.0f} s:"
                            f" its signed tasks (valid ±{DEFAULT_FRESHNESS:.0f} s) will be refused"))  # fmt: skip
    elif behind > 1:
        checks.append(Check("clock", "warn", f"{sync_text}; behind coordinator {who} by at least {behind:.0f} s"))
    else:
        skew = "no coordinator clock found ahead of ours" if online else "no coordinator to compare with"
        checks.append(Check("clock", "ok" if synced is not False else "warn", f"{sync_text}; {skew}"))
    return checks


async def run_doctor(
    config: AgentConfig, *, extra: Sequence[Callable[[], list[Check]]] = (), identity: Identity | None = None
) -> list[Check]:
    """Every check, in report order: broker, keys (``extra``, added by the caller), coordinators and clock,
    then this machine's runtimes, power, sensors, scratch, Python and platform."""
    local, remote = await asyncio.gather(local_checks(config), broker_checks(config, identity=identity))
    added: list[Check] = []
    for make in extra:
        added += await asyncio.to_thread(make)
    return [*remote[:1], *added, *remote[1:], *local]


_MARK: Final = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "info": "--"}


def render_table(checks: Sequence[Check]) -> str:
    """A plain-text table (no colours: it ends up in bug reports and journal logs)."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'':4}  detail"]
    lines += [f"{c.name:<{width}}  {_MARK[c.status]:<4}  {c.detail}" for c in checks]
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    lines.append(f"\n{failed} problem(s), {warned} warning(s)")
    return "\n".join(lines) + "\n"
