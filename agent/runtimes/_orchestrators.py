"""Agent configuration of the orchestrator runtimes: the ``[kubernetes]`` and ``[nomad]`` TOML tables.

A table's presence turns its runtime on. Example::

    [kubernetes]
    namespace = "dagon"
    in_cluster = true            # or: kubeconfig = "~/.kube/config", context = "edge"
    node_name_env = "NODE_NAME"  # the DaemonSet sets it from spec.nodeName
    # scratch_claim = "dagon-scratch"   # a ReadWriteMany PVC instead of a hostPath

    [nomad]
    address = "https://nomad.lab:4646"
    token_env = "NOMAD_TOKEN"    # the ACL token is read from this variable, never from the file
    datacenters = ["lab"]
    region = "global"
    node = "pi-1"                # Nomad node name of this machine (where the scratch lives)
    scratch_volume = "dagon-scratch"
    ca_file = "/etc/nomad/ca.pem"
    client_cert = "/etc/nomad/cli.pem"
    client_key = "/etc/nomad/cli-key.pem"

Every key is optional; unknown keys, wrong types and a ``token`` written into
the file are configuration errors that say what to change.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dagon.agent.runtimes._base import Runtime
from dagon.protocol import ConfigError

__all__ = ["KubernetesSettings", "NomadSettings", "orchestrator_runtimes", "read_orchestrator_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesSettings:
    """The ``[kubernetes]`` table (see :class:`~dagon.agent.runtimes.KubernetesRuntime`)."""

    namespace: str | None = None
    in_cluster: bool | None = None
    kubeconfig: str | None = None
    context: str | None = None
    node_name: str | None = None
    node_name_env: str = "NODE_NAME"
    scratch_claim: str | None = None
    watch_timeout: int = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class NomadSettings:
    """The ``[nomad]`` table (see :class:`~dagon.agent.runtimes.NomadRuntime`)."""

    address: str = "http://127.0.0.1:4646"
    token_env: str = "NOMAD_TOKEN"
    namespace: str | None = None
    region: str | None = None
    datacenters: list[str] = field(default_factory=lambda: ["dc1"])
    node: str | None = None
    scratch_volume: str | None = "dagon-scratch"
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    mhz_per_cpu: int = 1000
    wait: float = 60.0


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float)}


def _table(kind: type[Any], name: str, raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{name}] must be a TOML table, got {raw!r}")
    if name == "nomad" and "token" in raw:
        raise ConfigError(
            "[nomad] token must not be written in the config file: put it in an environment variable"
            " and name that variable with token_env (default NOMAD_TOKEN)"
        )
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"[{name}]: unknown setting(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        annotation = str(known[key].type)
        if annotation.startswith("list"):
            ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
            want = "a non-empty list of strings"
        else:
            base = annotation.split(" | ")[0]
            ok = isinstance(value, _TYPES[base]) and not (base != "bool" and isinstance(value, bool))
            want = {"str": "a string", "bool": "true or false", "int": "a whole number", "float": "a number"}[base]
        if not ok:
            raise ConfigError(f"[{name}] {key} must be {want}, got {value!r}")
        values[key] = value
    return kind(**values)


def read_orchestrator_settings(config_file: Path | None) -> tuple[KubernetesSettings | None, NomadSettings | None]:
    """The ``[kubernetes]`` and ``[nomad]`` tables of the agent's TOML file (``None`` when absent).

    Raises:
        ConfigError: the file cannot be read, or a table holds an unknown or malformed setting.
    """
    if config_file is None:
        return None, None
    try:
        values = tomllib.loads(Path(config_file).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {config_file} cannot be read: {exc}") from exc
    kubernetes = _table(KubernetesSettings, "kubernetes", values["kubernetes"]) if "kubernetes" in values else None
    nomad = _table(NomadSettings, "nomad", values["nomad"]) if "nomad" in values else None
    return kubernetes, nomad


def orchestrator_runtimes(*, config_file: Path | None, scratch: Path, env: Mapping[str, str]) -> list[Runtime]:
    """Build the runtimes the agent's TOML file configures (none without the tables).

    Args:
        config_file: the agent's TOML file (``--config``), or ``None``.
        scratch: the agent's scratch root (made visible to pods and jobs at the same path).
        env: environment (the Nomad token and the Kubernetes node name are read from it).

    Raises:
        ConfigError: bad settings, or the runtime's client library is not installed.
    """
    kubernetes, nomad = read_orchestrator_settings(config_file)
    runtimes: list[Runtime] = []
    try:
        if kubernetes is not None:
            from dagon.agent.runtimes._kubernetes import KubernetesRuntime

            runtimes.append(
                KubernetesRuntime(
                    scratch=scratch,
                    namespace=kubernetes.namespace,
                    in_cluster=kubernetes.in_cluster,
                    kubeconfig=kubernetes.kubeconfig,
                    context=kubernetes.context,
                    node_name=kubernetes.node_name or env.get(kubernetes.node_name_env) or None,
                    scratch_claim=kubernetes.scratch_claim,
                    watch_timeout=kubernetes.watch_timeout,
                    environ=env,
                )
            )
        if nomad is not None:
            from dagon.agent.runtimes._nomad import NomadRuntime

            runtimes.append(
                NomadRuntime(
                    scratch=scratch,
                    address=nomad.address,
                    token=env.get(nomad.token_env) or None,
                    namespace=nomad.namespace,
                    region=nomad.region,
                    datacenters=nomad.datacenters,
                    node=nomad.node,
                    scratch_volume=nomad.scratch_volume,
                    ca_file=nomad.ca_file,
                    client_cert=nomad.client_cert,
                    client_key=nomad.client_key,
                    mhz_per_cpu=nomad.mhz_per_cpu,
                    wait=nomad.wait,
                )
            )
    except ImportError as exc:
        raise ConfigError(f"{exc.name} is not installed: pip install 'dagon-engine[k8s]' for [kubernetes]") from exc
    except ValueError as exc:
        raise ConfigError(f"config file {config_file}: {exc}") from exc
    return runtimes
