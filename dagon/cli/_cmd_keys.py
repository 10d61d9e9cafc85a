"""``dagon keys``: this coordinator's key pair, and the clients and agents it trusts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.table import Table

from dagon import _keys
from dagon.cli._common import Subparsers, add_json, wide_console
from dagon.cli._settings import CliSettings
from dagon.protocol import AgentId, DagonError, fingerprint, public_key_line, raw_public_key

__all__ = ["add_commands"]


def add_commands(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="manage this coordinator's keys and whom it trusts")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_sub.add_parser("init", help="create the coordinator key pair in $DAGON_HOME/keys")
    init.add_argument("--force", action="store_true", help="replace an existing pair (agents must re-enroll)")
    keys_sub.add_parser("show", help="print the coordinator public key and its fingerprint")
    listing = keys_sub.add_parser("list", help="list the keys this home holds and trusts: its own, clients', agents'")
    add_json(listing)
    keys_sub.add_parser("client", help="print this home's client key, to enroll with `dagon keys trust-client`")
    trust_client = keys_sub.add_parser("trust-client", help="accept runs submitted with this client key")
    trust_client.add_argument("pubkey", type=Path, help="the client's public key file (`dagon keys client` prints it)")
    trust_coordinator = keys_sub.add_parser(
        "trust-coordinator", help="believe the answers signed by this coordinator key (for `dagon submit`/`cancel`)"
    )
    trust_coordinator.add_argument("pubkey", type=Path, help="the coordinator's coordinator.pub (`dagon keys show`)")
    trust_agent = keys_sub.add_parser("trust-agent", help="pin an agent's key (see `dagon-agent key`)")
    trust_agent.add_argument("agent", help="the agent id")
    trust_agent.add_argument("pubkey", type=Path, help="the agent's public key file (`dagon-agent key` prints it)")
    keys.set_defaults(handler=_keys_command)


def _has_coordinator_key(home: Path) -> bool:
    directory = _keys.keys_dir(home)
    return (directory / "coordinator.pub").exists() or any((directory / "trusted").glob("*.pub"))


def _keys_command(args: argparse.Namespace, settings: CliSettings) -> int:
    home = settings.home
    directory = _keys.keys_dir(home)
    out = sys.stdout
    if args.keys_command == "init":
        existing = directory / "coordinator.key"
        if existing.exists() and not args.force:
            raise DagonError(f"{existing} already exists; `dagon keys show` prints it (--force replaces it)")
        if args.force:
            for name in ("coordinator.key", "coordinator.pub"):
                (directory / name).unlink(missing_ok=True)
        signer = _keys.coordinator_signer(home)
        out.write(f"created {existing}\n")
    elif args.keys_command == "list":
        return _list(home, as_json=args.json)
    elif args.keys_command == "show":
        signer = _keys.coordinator_signer(home)
    elif args.keys_command == "client":
        signer = _keys.client_signer(home)
        own = _keys.load_or_create(home, "coordinator", create=False)
        name = "coordinator.pub" if own is not None and own.key_id == signer.key_id else "client.pub"
        out.write(f"{directory / name}\n{public_key_line(signer.public_key, 'dagon-client')}")
        out.write(f"fingerprint {fingerprint(signer.public_key)}\n")
        out.write("on the coordinator's machine: dagon keys trust-client client.pub\n")
        if not _has_coordinator_key(home):
            out.write("and here, with its coordinator.pub: dagon keys trust-coordinator coordinator.pub\n")
        return 0
    elif args.keys_command == "trust-client":
        target = _keys.enroll(home, args.pubkey, kind="clients")
        out.write(f"accepting runs signed by {fingerprint(_keys.read_public_key(target))} ({target})\n")
        out.write("a coordinator running from this home applies it at once (no restart needed)\n")
        return 0
    elif args.keys_command == "trust-coordinator":
        target = _keys.enroll(home, args.pubkey)
        out.write(f"trusting answers signed by coordinator key {fingerprint(_keys.read_public_key(target))}"
                  f" ({target})\n")  # fmt: skip
        return 0
    else:
        key = _keys.read_public_key(args.pubkey)
        trust = _keys.coordinator_trust(home)
        pinned = trust.pinned(args.agent)
        if pinned is not None and pinned != raw_public_key(key):
            raise DagonError(
                f"agent {args.agent!r} is already pinned to {fingerprint(pinned)} in {directory / 'known_agents'};"
                " remove that line first"
            )
        trust.pin(AgentId(args.agent), raw_public_key(key))
        out.write(f"agent {args.agent} pinned to {fingerprint(key)}\n")
        return 0
    out.write(f"{directory / 'coordinator.pub'}\n")
    out.write(public_key_line(signer.public_key, "dagon-coordinator"))
    out.write(f"fingerprint {fingerprint(signer.public_key)}\n")
    out.write("on each agent's machine: dagon-agent enroll coordinator.pub\n")
    return 0


def _list(home: Path, *, as_json: bool) -> int:
    """``dagon keys list``: every key of ``home`` with its role; creates nothing."""
    directory = _keys.keys_dir(home)
    rows: list[dict[str, str]] = []
    for name, role in (("coordinator", "coordinator"), ("client", "client"), ("agent", "agent")):
        signer = _keys.load_or_create(home, name, create=False)
        if signer is not None:
            rows.append({"role": f"own {role} key", "id": "", "fingerprint": fingerprint(signer.public_key),
                         "file": str(directory / f"{name}.pub")})  # fmt: skip
    for kind, role in (("clients", "trusted client"), ("trusted", "trusted coordinator")):
        for path in sorted((directory / kind).glob("*.pub")):
            key = _keys.read_public_key(path)
            rows.append({"role": role, "id": "", "fingerprint": fingerprint(key), "file": str(path)})
    pins = directory / "known_agents"
    for agent, raw in _keys._read_pins(pins).items():  # the file the coordinator reads
        rows.append({"role": "enrolled agent", "id": agent, "fingerprint": fingerprint(raw), "file": str(pins)})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    table = Table(title=f"keys in {directory}")
    for col in ("role", "id", "fingerprint", "file"):
        table.add_column(col, no_wrap=col == "fingerprint", overflow="fold")
    for row in rows:
        table.add_row(row["role"], row["id"], row["fingerprint"], row["file"])
    wide_console().print(table)
    return 0
