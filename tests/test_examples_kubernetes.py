"""The Kubernetes example manifests agree with each other and with what the runtime needs.

They are not applied to a cluster here (none can be installed); this checks their consistency.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from dagon.agent.runtimes import read_orchestrator_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kubernetes"


def docs(name: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all((EXAMPLE / name).read_text())}


def test_daemonset_mounts_the_scratch_hostpath_at_the_same_path_and_pins_by_node_name(tmp_path: Path) -> None:
    ds = docs("daemonset.yaml")["DaemonSet"]["spec"]["template"]["spec"]
    (agent,) = ds["containers"]
    env = {e["name"]: e for e in agent["env"]}
    scratch = env["DAGON_SCRATCH"]["value"]
    volumes = {v["name"]: v for v in ds["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert volumes["scratch"]["hostPath"]["path"] == scratch == mounts["scratch"]
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert ds["serviceAccountName"] == docs("rbac.yaml")["ServiceAccount"]["metadata"]["name"]
    # the ConfigMap's agent.toml is a valid agent file whose [kubernetes] table the runtime accepts
    config = docs("agent-config.yaml")["ConfigMap"]
    assert volumes["config"]["configMap"]["name"] == config["metadata"]["name"]
    (tmp_path / "agent.toml").write_text(config["data"]["agent.toml"])
    kubernetes, nomad = read_orchestrator_settings(tmp_path / "agent.toml")
    assert kubernetes is not None and nomad is None
    assert kubernetes.in_cluster is True and kubernetes.node_name_env == "NODE_NAME"
    assert tomllib.loads(config["data"]["agent.toml"])["kubernetes"]["namespace"] == ds_namespace()


def ds_namespace() -> str:
    return str(docs("daemonset.yaml")["DaemonSet"]["metadata"]["namespace"])


def test_role_grants_what_the_runtime_calls() -> None:
    rbac = docs("rbac.yaml")
    rules = {tuple(r["resources"]): set(r["verbs"]) for r in rbac["Role"]["rules"]}
    assert rules[("pods",)] >= {"create", "list", "watch", "delete"}
    assert rules[("pods/log",)] >= {"get"}
    binding = rbac["RoleBinding"]
    assert binding["roleRef"]["name"] == rbac["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == rbac["ServiceAccount"]["metadata"]["name"]
    assert rbac["Role"]["metadata"]["namespace"] == ds_namespace()
