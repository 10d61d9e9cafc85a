"""Key files under ``$DAGON_HOME/keys`` and the signers and trust policies built from them.

Layout (private keys are mode 0600, the directory 0700)::

    keys/coordinator.key, coordinator.pub   the coordinator's pair (`dagon keys init`, or first use)
    keys/agent.key, agent.pub               this machine's agent pair (first use)
    keys/client.key, client.pub             a remote client's pair, when it has no coordinator key
    keys/trusted/*.pub                      coordinator keys an agent was enrolled with
    keys/clients/*.pub                      client keys a coordinator accepts runs from
    keys/known_agents                       agent id → pinned key, one "ID ed25519 BASE64" per line

A coordinator, an agent and a client sharing one ``DAGON_HOME`` (one user on one
machine) trust each other with no extra step; across machines an agent needs the
coordinator's public key (``dagon-agent enroll``) and a remote client needs its key
enrolled on the coordinator (``dagon keys trust-client``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dagon.agent._private import private_dir, private_file
from dagon.protocol import (
    ConfigError,
    KeyRing,
    Signer,
    fingerprint,
    parse_public_key,
    private_key_from_pem,
    private_key_to_pem,
    public_key_line,
    raw_public_key,
)

__all__ = [
    "add_pin",
    "agent_keys",
    "agent_signer",
    "agent_trust",
    "client_public_key_file",
    "client_signer",
    "client_trust",
    "coordinator_signer",
    "coordinator_trust",
    "enroll",
    "keys_dir",
    "load_or_create",
    "read_public_key",
    "warn_insecure",
]

if TYPE_CHECKING:
    from dagon.core import CoordinatorTrust

log = logging.getLogger(__name__)


def keys_dir(home: Path) -> Path:
    return home / "keys"


def _private_keys_dir(home: Path, *sub: str) -> Path:
    """``keys/`` (and ``sub``) created 0700, also when their parents did not exist yet."""
    private_dir(home)
    directory = keys_dir(home)
    private_dir(directory)
    for name in sub:
        directory = directory / name
        private_dir(directory)
    return directory


def _private(path: Path) -> Signer:
    try:
        return Signer(private_key_from_pem(path.read_bytes(), source=str(path)))
    except ValueError as exc:
        raise ConfigError(f"{exc}; move it away to have a new key pair created") from None


def load_or_create(home: Path, name: str, *, create: bool = True) -> Signer | None:
    """The key pair ``keys/NAME.key``/``.pub``, created (0600) when missing and ``create``."""
    directory = keys_dir(home)
    path = directory / f"{name}.key"
    if path.exists():
        return _private(path)
    if not create:
        return None
    _private_keys_dir(home)
    key = Ed25519PrivateKey.generate()
    # Written aside, then linked into place: a concurrent process either wins the link or
    # reads a complete key, never a half-written one.
    tmp = directory / f".{name}.key.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_key_to_pem(key))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _private(path)
    finally:
        tmp.unlink(missing_ok=True)
    signer = Signer(key)
    pub_tmp = directory / f".{name}.pub.{os.getpid()}.tmp"
    pub_tmp.write_text(public_key_line(signer.public_key, f"dagon-{name}"))
    pub_tmp.replace(directory / f"{name}.pub")
    log.info("created the %s key pair %s (%s)", name, path, fingerprint(signer.public_key))
    return signer


def read_public_key(path: Path) -> Ed25519PublicKey:
    try:
        return parse_public_key(path.read_text(), source=str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _public_keys(directory: Path) -> list[Ed25519PublicKey]:
    if not directory.is_dir():
        return []
    return [read_public_key(path) for path in sorted(directory.glob("*.pub"))]


def coordinator_signer(home: Path) -> Signer:
    signer = load_or_create(home, "coordinator")
    assert signer is not None
    return signer


def agent_signer(home: Path) -> Signer:
    signer = load_or_create(home, "agent")
    assert signer is not None
    return signer


def client_signer(home: Path) -> Signer:
    """The coordinator's own key when it lives in this home (same user), else this client's key."""
    return load_or_create(home, "coordinator", create=False) or load_or_create(home, "client")  # type: ignore[return-value]


def client_public_key_file(home: Path) -> Path:
    """The public key file of :func:`client_signer`'s key."""
    directory = keys_dir(home)
    return directory / ("coordinator.pub" if (directory / "coordinator.key").exists() else "client.pub")


def client_trust(home: Path) -> KeyRing:
    """Coordinator keys a client checks the coordinators' answers against: the coordinator key of
    its own home and every one enrolled (``dagon keys trust-coordinator``, or an agent's
    ``dagon-agent enroll`` in the same home).

    Raises:
        ConfigError: there is none — no answer could be believed.
    """
    keys = _coordinator_keys(home)
    if not keys:
        raise ConfigError(
            f"no coordinator key in {keys_dir(home)} to check the coordinator's answers against: copy the"
            " coordinator's coordinator.pub (`dagon keys show` on its machine) here and run"
            " `dagon keys trust-coordinator coordinator.pub`"
        )
    return KeyRing(keys, what="trusted coordinator")


def _coordinator_keys(home: Path) -> list[Ed25519PublicKey]:
    """The coordinator keys a home trusts: every one enrolled under ``keys/trusted`` and its own."""
    keys = _public_keys(keys_dir(home) / "trusted")
    own = keys_dir(home) / "coordinator.pub"
    if own.exists():
        keys.append(read_public_key(own))
    return keys


def agent_keys(home: Path) -> tuple[Signer, KeyRing]:
    """An agent's signer and the coordinator keys it obeys."""
    return agent_signer(home), agent_trust(home)


def warn_insecure(logger: logging.Logger) -> None:
    logger.warning(
        "INSECURE MODE: messages are neither signed nor verified; anyone who can publish to the broker can run"
        " commands on the agents and forge results. Use --insecure only for development on a private broker."
    )


def agent_trust(home: Path) -> KeyRing:
    """Coordinator keys an agent obeys: the one in its own home and every enrolled one.

    Raises:
        ConfigError: there is none — the agent would refuse every task.
    """
    keys = _coordinator_keys(home)
    if not keys:
        raise ConfigError(
            f"no trusted coordinator key in {keys_dir(home)}: copy the coordinator's coordinator.pub here and run"
            " `dagon-agent enroll coordinator.pub` (or start the agent with --insecure for development only)"
        )
    return KeyRing(keys, what="trusted coordinator")


def _read_pins(path: Path) -> dict[str, bytes]:
    pins: dict[str, bytes] = {}
    if not path.exists():
        return pins
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        agent, _, key = line.strip().partition(" ")
        try:
            pins[agent] = raw_public_key(parse_public_key(key, source=f"{path}:{number}"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return pins


def coordinator_trust(home: Path) -> CoordinatorTrust:
    """Client keys (own + ``keys/clients``), enrolled agents (``keys/known_agents``) and the agent key
    of this home, enrolled for every agent id (one user on one machine needs no setup)."""
    from dagon.core import CoordinatorTrust  # here: agents import this module and need no coordinator

    private_dir(home)  # the coordinator's run store and enrolments live here
    directory = keys_dir(home)
    own = coordinator_signer(home).public_key

    def client_keys() -> list[Ed25519PublicKey]:
        keys = [*_public_keys(directory / "clients"), own]
        if (directory / "client.pub").exists():  # a client that ran from this home before the coordinator did
            keys.append(read_public_key(directory / "client.pub"))
        return keys

    clients = client_keys()
    clients_seen = [_mtime(directory / "clients")]

    def reload_clients() -> list[Ed25519PublicKey] | None:
        # `dagon keys trust-client` adds a file to keys/clients (its mtime changes): no restart needed
        mtime = _mtime(directory / "clients")
        if mtime == clients_seen[0]:
            return None
        clients_seen[0] = mtime
        try:
            return client_keys()
        except ConfigError as exc:
            log.warning("client keys not re-read: %s", exc)
            return None

    pins_file = directory / "known_agents"
    seen = [_mtime(pins_file)]

    def reload() -> dict[str, bytes] | None:
        mtime = _mtime(pins_file)
        if mtime == seen[0]:
            return None
        seen[0] = mtime
        try:
            return _read_pins(pins_file)
        except ConfigError as exc:
            log.warning("enrolled agents not re-read: %s", exc)
            return None

    def remember(agent: str, raw: bytes) -> None:
        try:
            add_pin(pins_file, agent, raw)
        except OSError as exc:
            log.warning(
                "could not record agent %s's key in %s (%s): it is enrolled until restart only", agent, pins_file, exc
            )

    return CoordinatorTrust(
        clients=clients,
        pinned=_read_pins(pins_file),
        agent_keys=[agent_signer(home).public_key],
        reload=reload,
        reload_clients=reload_clients,
        on_pin=remember,
        pins_file=str(pins_file),
    )


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def add_pin(pins_file: Path, agent: str, raw: bytes) -> None:
    """Append ``agent``'s enrolment to ``known_agents`` (created 0600 in a 0700 directory)."""
    private_dir(pins_file.parent)
    private_file(pins_file)
    fd = os.open(pins_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(f"{agent} {public_key_line(parse_public_key(raw))}")


def enroll(home: Path, source: Path, *, kind: str = "trusted") -> Path:
    """Copy a public key into ``keys/<kind>/`` under its fingerprint; returns the new file."""
    key = read_public_key(source)
    directory = _private_keys_dir(home, kind)
    name = fingerprint(key).removeprefix("SHA256:").replace("/", "_").replace("+", "-")[:22]
    target = directory / f"{name}.pub"
    target.write_text(public_key_line(key, f"enrolled from {source.name}"))
    return target
