"""``dagon-agent service …`` and ``dagon-agent doctor``: the device end's command lines.

Thin: the unit lives in :mod:`dagon.agent._service`, the checks in :mod:`dagon.agent._doctor`;
the keys check is here because key files are :mod:`dagon._keys`' business.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

from dagon._keys import agent_trust, keys_dir, load_or_create
from dagon.agent import AgentConfig, load_agent_config
from dagon.agent._doctor import Check, Identity, render_table, run_doctor
from dagon.agent._service import (
    DEFAULT_GROUPS,
    ServiceSpec,
    install_service,
    render_unit,
    systemd_version,
    uninstall_service,
)
from dagon.cli._parser import DagonParser
from dagon.protocol import ConfigError, DagonError, fingerprint

__all__ = [
    "add_doctor_arguments", "add_service_arguments", "doctor_main", "run_doctor_command", "run_service", "service_main"
]  # fmt: skip

UNIT_DIR = Path("/etc/systemd/system")


def add_service_arguments(p: argparse.ArgumentParser) -> None:
    """``install`` and ``uninstall`` under ``p`` (``dagon-agent service``)."""
    sub = p.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    inst = sub.add_parser("install", help="write the unit (and a starter config), create the service user")
    inst.add_argument("--user", default="dagon", help="the agent's system user (created if absent)")
    inst.add_argument("--config", type=Path, default=Path("/etc/dagon/agent.toml"), help="agent TOML configuration")
    inst.add_argument("--env-file", type=Path, default=Path("/etc/dagon/agent.env"), help="optional KEY=value file")
    inst.add_argument("--scratch", type=Path, help="scratch root (default /var/lib/dagon/scratch)")
    inst.add_argument("--broker", help="broker URL written into a new config file")
    inst.add_argument("--groups", help="device groups to join if present (default dialout,gpio,i2c,spi,video)")
    inst.add_argument("--docker", action="store_true", help="also join the docker group (root-equivalent)")
    inst.add_argument("--watchdog", type=int, default=30, help="WatchdogSec= in seconds, 0 for none (default 30)")
    inst.add_argument("--name", default="dagon-agent", help="unit name (default dagon-agent)")
    inst.add_argument("--state", default="dagon", help="state directory under /var/lib (default dagon)")
    inst.add_argument("--unit-dir", type=Path, default=UNIT_DIR, help=f"where the unit goes (default {UNIT_DIR})")
    inst.add_argument("--print", action="store_true", help="only print the unit; change nothing")
    rm = sub.add_parser("uninstall", help="stop, disable and remove the unit (user, config and state stay)")
    rm.add_argument("--name", default="dagon-agent", help="unit name (default dagon-agent)")
    rm.add_argument("--unit-dir", type=Path, default=UNIT_DIR, help=f"where the unit is (default {UNIT_DIR})")


def service_main(argv: list[str]) -> int:
    """``dagon-agent service install|uninstall``; 0 done, 2 refused (the message says why)."""
    p = DagonParser(prog="dagon-agent service", description="Run dagon-agent as a systemd service.")
    add_service_arguments(p)
    return run_service(p.parse_args(argv))


def run_service(args: argparse.Namespace) -> int:
    """The ``service`` command with its parsed arguments."""
    try:
        if args.service_command == "uninstall":
            removed = uninstall_service(args.name, unit_dir=args.unit_dir)
            if removed is None:
                sys.stdout.write(f"no {args.name}.service in {args.unit_dir}: nothing to remove\n")
            else:
                sys.stdout.write(
                    f"removed {removed}\nkept: the service user, /etc/dagon and /var/lib/dagon (keys, spool, scratch);"
                    " remove them by hand if the device leaves the fleet\n"
                )
            return 0
        spec = ServiceSpec(
            name=args.name, user=args.user, state=args.state, config=args.config.absolute(),
            env_file=args.env_file.absolute(),
            scratch=args.scratch.absolute() if args.scratch else None, docker=args.docker, watchdog=args.watchdog,
            groups=tuple(g.strip() for g in args.groups.split(",") if g.strip()) if args.groups is not None
            else DEFAULT_GROUPS, systemd=systemd_version() or 252,
        )  # fmt: skip
        if args.print:
            sys.stdout.write(render_unit(spec))
            return 0
        done = install_service(spec, unit_dir=args.unit_dir, broker=args.broker)
    except DagonError as exc:
        sys.stderr.write(f"dagon-agent: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"dagon-agent: error: {exc}\n")
        return 2
    sys.stdout.write("".join(f"created {item}\n" for item in done.created))
    sys.stdout.write("next:\n" + "".join(f"  {i}. {step}\n" for i, step in enumerate(done.next_steps, 1)))
    return 0


def _keys_check(home: Path) -> list[Check]:
    checks: list[Check] = []
    try:
        signer = load_or_create(home, "agent", create=False)
    except ConfigError as exc:
        return [Check("keys", "fail", str(exc))]
    if signer is None:
        checks.append(Check("keys", "info", f"no agent key in {keys_dir(home)} yet: created at the first start"))
    else:
        checks.append(Check("keys", "ok", f"agent key {fingerprint(signer.public_key)}"))
    try:
        trust = agent_trust(home)
    except ConfigError as exc:
        checks.append(Check("enrollment", "fail", str(exc)))
    else:
        names = sorted(p.name for p in (keys_dir(home) / "trusted").glob("*.pub"))
        checks.append(Check("enrollment", "ok", f"obeys {len(trust)} coordinator key(s): {', '.join(names) or 'own'}"))
    return checks


def _identity(config: AgentConfig, *, known: bool) -> Identity | None:
    """The agent's id, key and trusted coordinator keys, to measure the clock with (None: not all there)."""
    if not known:
        return None
    try:
        signer = load_or_create(config.home, "agent", create=False)
        trust = agent_trust(config.home)
    except ConfigError:
        return None
    return Identity(config.agent_id, signer, trust) if signer is not None else None


def add_doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file (as the service uses)")
    p.add_argument("--broker", help="broker URL (default: the configuration's)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def doctor_main(argv: list[str]) -> int:
    """``dagon-agent doctor``; exit 0 when nothing failed, 1 otherwise, 2 for a configuration error."""
    p = DagonParser(prog="dagon-agent doctor", description="What this device can do, and what is wrong.")
    add_doctor_arguments(p)
    return run_doctor_command(p.parse_args(argv))


def run_doctor_command(args: argparse.Namespace) -> int:
    """The ``doctor`` command with its parsed arguments."""
    try:
        env = dict(os.environ)
        known = "DAGON_AGENT_ID" in env
        if not known:  # the id of the agent that ran here, else one that creates no id file just to look around
            looking = load_agent_config(config_file=args.config, env={**env, "DAGON_AGENT_ID": "doctor"}, flags={})
            saved = looking.home / "agent-id"
            known = saved.is_file()
            env["DAGON_AGENT_ID"] = saved.read_text().strip() if known else "doctor"
        config = load_agent_config(config_file=args.config, env=env, flags={"broker": args.broker})
    except DagonError as exc:
        sys.stderr.write(f"dagon-agent: error: {exc}\n")
        return 2
    identity = _identity(config, known=known)
    checks = asyncio.run(run_doctor(config, extra=[lambda: _keys_check(config.home)], identity=identity))
    if args.json:
        sys.stdout.write(json.dumps([dataclasses.asdict(c) for c in checks], indent=1) + "\n")
    else:
        sys.stdout.write(render_table(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
