"""``dagon broker-config``: a Mosquitto configuration with TLS and a per-agent ACL.

Every client authenticates with a certificate from a private CA; Mosquitto takes
the certificate's common name as the username (``use_identity_as_username``) and
the ACL confines each identity:

* an agent (CN = its agent id) reads only its own ``tasks`` and ``control``
  topics and writes only its own ``status`` and ``telemetry`` topics (and its public
  JSON telemetry), the coordinator inboxes and sensor readings — it cannot publish
  as another agent;
* a coordinator (CN ``coordinator:ID``) reads and writes everything under ``dagon/``;
* a client (CN ``client:NAME``) submits to coordinator inboxes, reads every public
  JSON document (``dagon/v1/#``), the agents' signed announces (to approve them) and the
  coordinators' signed answers to clients.

Public JSON lives under ``dagon/v1/``, the signed msgpack protocol under
``dagon/wire/v1/`` (see ``dagon.protocol.topics``).

Running it again in the same directory keeps the CA and existing certificates and
adds the identities that are new, so agents can be added later.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dagon.protocol import NAME_RE, ConfigError

__all__ = ["BrokerBundle", "generate_broker_config"]

_VALID_DAYS = 825
_CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BrokerBundle:
    """What was written: the Mosquitto config and, per identity, its certificate and key."""

    config: Path
    acl: Path
    ca: Path
    identities: dict[str, tuple[Path, Path]]  # CN -> (certificate, key)
    port: int


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _load_or_make_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = directory / "ca.key", directory / "ca.crt"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not the EC key dagon broker-config writes")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dagon broker CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _issue(
    directory: Path,
    stem: str,
    common_name: str,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    *,
    server_names: Sequence[str] = (),
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _acl(coordinators: Iterable[str], clients: Iterable[str]) -> str:
    lines = [
        "# generated by `dagon broker-config`; identities are certificate common names",
        "",
    ]
    for cid in coordinators:
        lines += [f"user coordinator:{cid}", "topic readwrite dagon/#", ""]
    for name in clients:
        lines += [
            f"user client:{name}",
            "topic write dagon/wire/v1/coordinator/+/inbox",
            "topic read dagon/wire/v1/agents/+/status",
            "topic read dagon/wire/v1/clients/+/answers",  # the coordinators' signed answers (any client id)
            "topic read dagon/v1/#",
            "",
        ]
    lines += [
        "# every agent: its certificate's common name is its agent id (%u)",
        "pattern read dagon/wire/v1/agents/%u/tasks",
        "pattern read dagon/wire/v1/agents/%u/control",
        "pattern write dagon/wire/v1/agents/%u/status",
        "pattern write dagon/wire/v1/agents/%u/telemetry",
        "pattern write dagon/wire/v1/coordinator/+/inbox",
        "pattern write dagon/v1/agents/%u/telemetry/json",
        "pattern write dagon/v1/runs/+/tasks/+/readings",
        "",
    ]
    return "\n".join(lines)


def generate_broker_config(
    directory: Path,
    *,
    agents: Sequence[str],
    coordinators: Sequence[str] = ("main",),
    clients: Sequence[str] = (),
    port: int = 8883,
    listen: str = "127.0.0.1",
    server_names: Sequence[str] = ("localhost", "127.0.0.1"),
) -> BrokerBundle:
    """Write ``mosquitto.conf``, ``acl``, the CA and one certificate per identity into ``directory``.

    Raises:
        ConfigError: an identity name is not a valid dagon name, or two collide.
    """
    for kind, names in (("agent", agents), ("coordinator", coordinators), ("client", clients)):
        for name in names:
            if not NAME_RE.fullmatch(name) or ":" in name:
                raise ConfigError(f"{kind} name {name!r} is not valid (letters, digits, '.', '_', '-')")
    if not agents:
        raise ConfigError("name at least one agent (--agent ID); run again later to add more")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    certs = directory / "certs"
    certs.mkdir(exist_ok=True, mode=0o700)
    ca = _load_or_make_ca(directory)
    server_cert, server_key = _issue(directory, "server", server_names[0], ca, server_names=server_names)
    identities: dict[str, tuple[Path, Path]] = {}
    for cid in coordinators:
        identities[f"coordinator:{cid}"] = _issue(certs, f"coordinator-{cid}", f"coordinator:{cid}", ca)
    for name in clients:
        identities[f"client:{name}"] = _issue(certs, f"client-{name}", f"client:{name}", ca)
    for agent in agents:
        identities[agent] = _issue(certs, f"agent-{agent}", agent, ca)
    acl = directory / "acl"
    acl.write_text(_acl(coordinators, clients))
    config = directory / "mosquitto.conf"
    config.write_text(
        "# generated by `dagon broker-config`: TLS with client certificates and a per-agent ACL\n"
        f"listener {port} {listen}\n"
        f"cafile {directory / 'ca.crt'}\n"
        f"certfile {server_cert}\n"
        f"keyfile {server_key}\n"
        "require_certificate true\n"
        "use_identity_as_username true\n"
        "allow_anonymous false\n"
        f"acl_file {acl}\n"
        "max_queued_messages 100000\n"
        "# small control messages leave at once (dagon's clients also acknowledge at once, see docs/broker.md)\n"
        "set_tcp_nodelay true\n"
        "# durable sessions across broker restarts: persistence true + persistence_location (writable by mosquitto)\n"
        "persistence false\n"
    )
    return BrokerBundle(config=config, acl=acl, ca=directory / "ca.crt", identities=identities, port=port)
