"""``dagon agents``: who is on the broker, and whether a coordinator admits them.

Three sources, none of them trusted blindly:

* the agents' signed announces (``dagon/wire/v1/agents/+/status``, retained): who is up, with
  the key it signs with — each checked to be signed by the key it carries;
* the coordinators' public agent documents (``dagon/v1/coordinator/+/agents/+``): an online
  coordinator publishes one for each agent it *admitted*, with free slots and last contact;
* the enrolments of this ``DAGON_HOME`` (``keys/known_agents`` and its own agent key): what its
  coordinator admits, also while no coordinator runs (``dagon run --broker`` between runs).

An announce none of them admits is *not admitted*: listed as such (never as an online worker),
with the fingerprint to compare and ``dagon agents approve ID``. Rows have the shape of the
``dagon.agent-status/1`` document (``docs/mqtt-topics.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dagon._approve import candidate
from dagon._keys import _read_pins, keys_dir, read_public_key
from dagon.protocol import (
    SCHEMA_AGENT_STATUS,
    SCHEMA_COORDINATOR,
    Announce,
    Codec,
    ConfigError,
    DagonError,
    Offline,
    ProtocolError,
    decode_public,
    fingerprint,
    raw_public_key,
    topics,
)

__all__ = ["agent_rows", "local_enrolments"]

log = logging.getLogger(__name__)


def local_enrolments(home: Path) -> tuple[dict[str, bytes], bytes]:
    """``(agent id → enrolled key, this home's agent key or b"")``, read without creating anything."""
    directory = keys_dir(home)
    try:
        pins = _read_pins(directory / "known_agents")
    except (ConfigError, OSError) as exc:
        log.warning("enrolled agents not read: %s", exc)
        pins = {}
    own = b""
    if (directory / "agent.pub").exists():
        try:
            own = raw_public_key(read_public_key(directory / "agent.pub"))
        except (DagonError, ValueError, OSError) as exc:
            log.warning("this home's agent key not read: %s", exc)
    return pins, own


def _coordinator_views(
    documents: Iterable[tuple[str, bytes]], coordinators: Iterable[tuple[str, bytes]]
) -> dict[str, dict[str, Any]]:
    """Agent id → the document of an *online* coordinator (an offline one's are its last view)."""
    online = set()
    for _topic, payload in coordinators:
        try:
            doc = decode_public(payload, schema=SCHEMA_COORDINATOR)
        except ProtocolError:
            continue
        if doc.get("online") is True:
            online.add(doc.get("id"))
    views: dict[str, dict[str, Any]] = {}
    for topic, payload in documents:
        try:
            doc = decode_public(payload, schema=SCHEMA_AGENT_STATUS)
        except ProtocolError as exc:
            log.warning("unreadable agent status on %s: %s", topic, exc)
            continue
        agent = doc.get("agent")
        usable = doc.get("coordinator") in online and isinstance(agent, str) and doc.get("admitted") is True
        if usable and (agent not in views or (doc.get("online") and not views[agent].get("online"))):
            views[str(agent)] = doc
    return views


def _row(agent: str, caps: Any, *, admitted: bool, online: bool, reason: str, key: bytes) -> dict[str, Any]:
    row: dict[str, Any] = {
        "schema": SCHEMA_AGENT_STATUS, "coordinator": None, "agent": agent, "admitted": admitted,
        "online": online, "reason": reason,
    }  # fmt: skip
    if caps is not None:
        row |= {
            "hostname": caps.hostname, "arch": caps.arch, "os": caps.os, "version": caps.version,
            "cpus": caps.cpus, "memory": caps.memory, "runtimes": list(caps.runtimes), "labels": dict(caps.labels),
            "devices": list(caps.devices), "slots": caps.slots, "running": None,
            "free_slots": None, "last_seen": None,
        }  # fmt: skip
    row["fingerprint"] = fingerprint(key) if key else None
    return row


def agent_rows(
    statuses: list[tuple[str, bytes]],
    documents: list[tuple[str, bytes]],
    coordinators: list[tuple[str, bytes]],
    home: Path,
) -> list[dict[str, Any]]:
    """One row per agent seen (see the module docstring), sorted by id."""
    views = _coordinator_views(documents, coordinators)
    pins, own = local_enrolments(home)
    codec = Codec(sender="cli")
    rows: dict[str, dict[str, Any]] = {}
    for topic, payload in statuses:
        try:
            msg = codec.decode(payload, limit=topics.payload_limit(topic)).message
        except ProtocolError as exc:
            log.warning("unreadable agent status on %s: %s", topic, exc)
            continue
        if isinstance(msg, Offline):
            rows[msg.agent] = _row(
                msg.agent, None, admitted=msg.agent in pins, online=False, reason=msg.reason, key=b""
            )
            continue
        if not isinstance(msg, Announce):
            continue
        try:
            key = candidate(msg.agent, [(topic, payload)]).key  # signed by the key it carries
        except DagonError as exc:
            log.warning("agent status on %s not listed: %s", topic, exc)
            continue
        view = views.get(msg.agent)
        admitted = (view is not None and view.get("fingerprint") in (None, fingerprint(key))) or (
            pins.get(msg.agent) == key or (key == own and msg.agent not in pins)
        )
        if admitted:
            rows[msg.agent] = _row(msg.agent, msg.capabilities, admitted=True, online=True, reason="announced", key=key)
        else:
            reason = (
                "compare its fingerprint with `dagon-agent key` on its machine, then"
                f" `dagon agents approve {msg.agent}`"
            )
            if msg.agent in pins:
                reason = f"it signs with another key than the one enrolled for {msg.agent!r} in this DAGON_HOME"
            rows[msg.agent] = _row(msg.agent, msg.capabilities, admitted=False, online=False, reason=reason, key=key)
    for agent, view in views.items():  # the coordinator's view wins for what it knows
        row = rows.get(agent)
        if row is None or row["admitted"] or row.get("fingerprint") == view.get("fingerprint"):
            rows[agent] = dict(view)
    return [rows[a] for a in sorted(rows)]
