"""The Kubernetes runtime: one pod per attempt, watched to its end (kubernetes-asyncio).

The pod runs ``/bin/sh -c COMMAND`` in the task's scratch directory, which is
mounted into the pod at the same absolute path — a ``hostPath`` of the agent's
scratch root (the agent runs as a DaemonSet and pins its pods to its own node),
or a ReadWriteMany PersistentVolumeClaim mounted at the scratch root. Staged
inputs (hard links, symlinks into sibling task directories) therefore resolve
inside the pod exactly as they do for the process runtime.

The pod's phase is followed with a watch (``?watch=true`` with a field selector
on its name), resumed from the last resourceVersion when the server ends the
stream and re-listed when that version is too old (410 Gone) — never polled.
The exit code is the container's ``state.terminated.exitCode``. Kubernetes
merges a container's stdout and stderr into one log: it is written to the
task's stdout file, and its tail is reported as the stderr tail of a failed
attempt. The pod is deleted when the attempt ends, times out or is cancelled.

Task options (``runtime_options``): ``image`` (required), ``namespace``,
``node_selector``, ``privileged``, ``devices`` (host device paths mounted at
the same path; most clusters also need ``privileged``), ``scratch_claim``
(PVC name instead of the hostPath), ``service_account``, ``image_pull_policy``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException, load_kube_config
from kubernetes_asyncio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)

from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._jobs import OptionError, Options, backoff, object_name, read_tail, run_cleanup, within
from dagon.protocol import ResultStatus

__all__ = ["KubernetesRuntime"]

log = logging.getLogger(__name__)

CONTAINER: Final = "task"
NAMESPACE_FILE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_OPTIONS: Final = frozenset(
    {"image", "namespace", "node_selector", "privileged", "devices", "scratch_claim", "service_account",
     "image_pull_policy"}
)  # fmt: skip
# Waiting reasons that will not resolve by themselves: the attempt ends as an ERROR at once.
_FATAL_WAITING: Final = frozenset({"ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError"})
_CHUNK: Final = 64 * 1024


class _PodGone(Exception):
    """The pod was deleted (or evicted and removed) by someone else before it finished."""


@dataclass(frozen=True, slots=True)
class _End:
    status: ResultStatus
    exit_code: int | None
    error: str = ""


def _label(value: str) -> str:
    """A label value (63 chars of ``[A-Za-z0-9._-]``, alphanumeric ends); full values go in annotations."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in value)[:63]
    return cleaned.strip("._-")


def _quantity_cpu(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


class KubernetesRuntime(Runtime):
    """Runs each attempt as a pod.

    Args:
        scratch: the agent's scratch root (mounted into every pod at the same path).
        namespace: default namespace (a task's ``namespace`` option wins); ``None``
            reads the service account's namespace in-cluster, else ``"default"``.
        in_cluster: authenticate with the pod's service account (token and CA files
            under ``/var/run/secrets/kubernetes.io/serviceaccount``); ``None`` picks
            in-cluster when ``KUBERNETES_SERVICE_HOST`` is set, else the kubeconfig.
        kubeconfig: kubeconfig file (default ``$KUBECONFIG`` or ``~/.kube/config``).
        context: kubeconfig context (default: its current context).
        node_name: the node this agent runs on; hostPath pods are pinned to it
            (``NODE_NAME`` from the downward API in the DaemonSet example).
        scratch_claim: mount this PVC at the scratch root instead of a hostPath.
        watch_timeout: seconds the server keeps one watch open before it is resumed.
        environ: environment used for in-cluster discovery (tests pass their own).
        token_file, ca_file: in-cluster credential files (tests pass their own).
    """

    name: ClassVar[str] = "kubernetes"

    def __init__(
        self,
        *,
        scratch: Path,
        namespace: str | None = None,
        in_cluster: bool | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        node_name: str | None = None,
        scratch_claim: str | None = None,
        watch_timeout: int = 300,
        environ: Mapping[str, str] | None = None,
        token_file: str = SERVICE_TOKEN_FILENAME,
        ca_file: str = SERVICE_CERT_FILENAME,
    ) -> None:
        if watch_timeout < 1:
            raise ValueError(f"watch_timeout must be at least 1 second, got {watch_timeout}")
        self._scratch = Path(scratch).absolute()
        self._environ = dict(os.environ if environ is None else environ)
        self._in_cluster = bool(self._environ.get("KUBERNETES_SERVICE_HOST")) if in_cluster is None else in_cluster
        self._kubeconfig = kubeconfig
        self._context = context
        self._node_name = node_name or None
        self._scratch_claim = scratch_claim or None
        self._watch_timeout = watch_timeout
        self._token_file = token_file
        self._ca_file = ca_file
        self._namespace = namespace
        self._api: k8s.ApiClient | None = None
        self._lock = asyncio.Lock()

    # -- connection -------------------------------------------------------------------------

    async def configuration(self) -> k8s.Configuration:
        """Load the credentials (in-cluster or kubeconfig) into a fresh client configuration.

        Raises:
            ConfigException: the credentials cannot be found or read.
        """
        cfg = k8s.Configuration()
        if self._in_cluster:
            loader = InClusterConfigLoader(
                token_filename=self._token_file,
                cert_filename=self._ca_file,
                environ=self._environ,
            )
            await asyncio.to_thread(loader.load_and_set, cfg)
        else:
            await load_kube_config(config_file=self._kubeconfig, context=self._context, client_configuration=cfg)
        return cfg

    async def _client(self) -> k8s.CoreV1Api:
        async with self._lock:
            if self._api is None:
                self._api = k8s.ApiClient(await self.configuration())
                if self._namespace is None:
                    self._namespace = await asyncio.to_thread(self._default_namespace)
            return k8s.CoreV1Api(self._api)

    def _default_namespace(self) -> str:
        if self._in_cluster:
            try:
                return Path(NAMESPACE_FILE).read_text().strip() or "default"
            except OSError:
                pass
        return "default"

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    # -- one attempt ------------------------------------------------------------------------

    async def run(self, execution: Execution) -> Outcome:
        a = execution.assignment
        try:
            opts = Options("kubernetes", a.runtime_options, _OPTIONS)
            image = opts.required("image")
            namespace_option = opts.text("namespace")
            pod = self._pod(execution, opts, image)
        except OptionError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        try:
            v1 = await self._client()
        except (ConfigException, OSError, ValueError) as exc:
            return Outcome(ResultStatus.ERROR, None, error=f"cannot load Kubernetes credentials: {exc}")
        namespace = namespace_option or self._namespace or "default"
        name = pod["metadata"]["name"]
        pod["metadata"]["namespace"] = namespace
        created = sent = False  # sent: the pod may exist even if the answer never came
        try:
            async with asyncio.timeout(a.timeout):
                sent = True
                (await v1.create_namespaced_pod(namespace, pod, _preload_content=False)).release()
                created = True
                log.info("task %s/%s attempt %d: pod %s/%s created", a.run, a.task, a.attempt, namespace, name)
                end = await self._wait(v1, namespace, name)
        except TimeoutError:
            end = _End(ResultStatus.TIMEOUT, None, f"pod {namespace}/{name} deleted after the {a.timeout:g} s timeout")
            if sent and not created:
                await run_cleanup(lambda: self._delete(v1, namespace, name, grace=0))
        except asyncio.CancelledError:
            if sent:
                await run_cleanup(lambda: self._delete(v1, namespace, name, grace=0))
            raise
        except _PodGone:
            end = _End(ResultStatus.ERROR, None, f"pod {namespace}/{name} was deleted before it finished")
            created = False
        except ApiException as exc:
            end = _End(ResultStatus.ERROR, None, f"Kubernetes API refused {namespace}/{name}: {_api_message(exc)}")
        except aiohttp.ClientError as exc:
            end = _End(ResultStatus.ERROR, None, f"cannot reach the Kubernetes API: {type(exc).__name__}: {exc}")
        if created:
            await run_cleanup(lambda: self._finish(v1, namespace, name, execution, end))
        tail = ""
        if end.status is not ResultStatus.SUCCEEDED:
            tail = await asyncio.to_thread(read_tail, execution.stdout)
        return Outcome(end.status, end.exit_code, error=end.error, stderr_tail=tail)

    async def _finish(self, v1: k8s.CoreV1Api, namespace: str, name: str, execution: Execution, end: _End) -> None:
        """Logs into the stdout file (best effort), then delete the pod."""
        try:
            await self._logs(v1, namespace, name, execution.stdout)
        except (ApiException, aiohttp.ClientError, OSError) as exc:
            log.warning("logs of pod %s/%s could not be read: %s", namespace, name, exc)
            await asyncio.to_thread(
                execution.stderr.write_text, f"dagon: the pod's log could not be read: {_api_message(exc)}\n"
            )
        grace = None if end.status in (ResultStatus.SUCCEEDED, ResultStatus.FAILED) else 0
        await self._delete(v1, namespace, name, grace=grace)

    async def _logs(self, v1: k8s.CoreV1Api, namespace: str, name: str, target: Path) -> None:
        resp = await v1.read_namespaced_pod_log(name, namespace, container=CONTAINER, _preload_content=False)
        try:
            out = await asyncio.to_thread(target.open, "wb")
            try:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    await asyncio.to_thread(out.write, chunk)
            finally:
                await asyncio.to_thread(out.close)
        finally:
            resp.release()

    async def _delete(self, v1: k8s.CoreV1Api, namespace: str, name: str, *, grace: int | None) -> None:
        try:
            resp = await v1.delete_namespaced_pod(name, namespace, grace_period_seconds=grace, _preload_content=False)
            resp.release()
            log.info("pod %s/%s deleted", namespace, name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pod %s/%s could not be deleted: %s", namespace, name, _api_message(exc))
        except aiohttp.ClientError as exc:
            log.warning("pod %s/%s could not be deleted: %s", namespace, name, exc)

    # -- watching ---------------------------------------------------------------------------

    async def _wait(self, v1: k8s.CoreV1Api, namespace: str, name: str) -> _End:
        """Follow the pod until it ends: list once, then watch from the list's resourceVersion."""
        version: str | None = None
        idle = 0  # watches in a row that ended without an event
        while True:
            if version is None:
                listing = await self._json(
                    await v1.list_namespaced_pod(
                        namespace, field_selector=f"metadata.name={name}", _preload_content=False
                    )
                )
                pods = [p for p in listing.get("items") or () if p.get("metadata", {}).get("name") == name]
                if not pods:
                    raise _PodGone(name)
                if (end := _ended(pods[0])) is not None:
                    return end
                version = (listing.get("metadata") or {}).get("resourceVersion") or ""
            events = 0
            try:
                async for kind, pod in self._watch(v1, namespace, name, version):
                    events += 1
                    if pod.get("metadata", {}).get("name") != name:
                        continue  # a server that ignores the field selector streams its neighbours too
                    version = pod["metadata"].get("resourceVersion") or version
                    if kind == "DELETED":
                        raise _PodGone(name)
                    if (end := _ended(pod)) is not None:
                        return end
            except ApiException as exc:
                if exc.status != 410:
                    raise
                version = None  # too old: list again
            idle = 0 if events else idle + 1
            if idle:
                await asyncio.sleep(backoff(idle))

    async def _watch(
        self, v1: k8s.CoreV1Api, namespace: str, name: str, version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """One watch request; yields ``(type, pod)`` until the server ends the stream."""
        # ``watch=true`` spelled as kubectl and the API reference write it.
        resp = await v1.list_namespaced_pod(
            namespace,
            field_selector=f"metadata.name={name}",
            watch="true",
            resource_version=version or None,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            _request_timeout=self._watch_timeout + 30,
        )
        try:
            while line := await resp.content.readline():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code", 500), reason=f"{obj.get('reason')}: {obj.get('message')}")
                if kind == "BOOKMARK":
                    continue
                yield kind, obj
        finally:
            resp.release()

    @staticmethod
    async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
        try:
            return await resp.json(content_type=None)  # type: ignore[no-any-return]
        finally:
            resp.release()

    # -- the pod ----------------------------------------------------------------------------

    def _pod(self, execution: Execution, opts: Options, image: str) -> dict[str, Any]:
        a = execution.assignment
        claim = opts.text("scratch_claim") or self._scratch_claim
        root = self._scratch if within(execution.workdir, self._scratch) else execution.workdir
        volumes: list[dict[str, Any]] = [
            {"name": "scratch", "persistentVolumeClaim": {"claimName": claim}}
            if claim
            else {"name": "scratch", "hostPath": {"path": str(root), "type": "Directory"}}
        ]
        mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": str(root)}]
        for i, device in enumerate(opts.paths("devices")):
            volumes.append({"name": f"device-{i}", "hostPath": {"path": device, "type": "CharDevice"}})
            mounts.append({"name": f"device-{i}", "mountPath": device})
        resources: dict[str, str] = {"cpu": _quantity_cpu(a.cpus)}
        if a.memory > 0:
            resources["memory"] = str(a.memory)
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": image,
            "command": ["/bin/sh", "-c", execution.command],
            "workingDir": str(execution.workdir),
            "env": [{"name": k, "value": v} for k, v in execution.env.items()],
            "resources": {"requests": resources, "limits": dict(resources)},
            "volumeMounts": mounts,
            "securityContext": {"privileged": opts.flag("privileged")},
        }
        if policy := opts.text("image_pull_policy", choices=("Always", "IfNotPresent", "Never")):
            container["imagePullPolicy"] = policy
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": volumes,
            "automountServiceAccountToken": False,
        }
        if selector := opts.str_map("node_selector"):
            spec["nodeSelector"] = selector
        if account := opts.text("service_account"):
            spec["serviceAccountName"] = account
            spec["automountServiceAccountToken"] = True
        if a.timeout:
            # A safety net if this agent dies: the kubelet ends the pod a little after our own timeout.
            spec["activeDeadlineSeconds"] = math.ceil(a.timeout) + 60
        if self._node_name and not claim:
            # The hostPath only holds the inputs on this agent's node.
            term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [self._node_name]}]}
            spec["affinity"] = {
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
            }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": object_name("dagon", a.run, a.task, a.attempt, limit=63),
                "labels": {
                    "app.kubernetes.io/managed-by": "dagon",
                    "dagon.io/run": _label(a.run),
                    "dagon.io/task": _label(a.task),
                    "dagon.io/attempt": str(a.attempt),
                },
                "annotations": {"dagon.io/run": a.run, "dagon.io/task": a.task},
            },
            "spec": spec,
        }


def _ended(pod: Mapping[str, Any]) -> _End | None:
    """How the pod ended, or ``None`` while it is still pending or running."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or ():
        if cs.get("name") != CONTAINER:
            continue
        state = cs.get("state") or {}
        if (term := state.get("terminated")) is not None:
            code = int(term.get("exitCode", -1))
            if code == 0:
                return _End(ResultStatus.SUCCEEDED, 0)
            why = " ".join(str(term[k]) for k in ("reason", "message") if term.get(k))
            return _End(ResultStatus.FAILED, code, f"container exited with {code}" + (f" ({why})" if why else ""))
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in _FATAL_WAITING:
            return _End(
                ResultStatus.ERROR, None, f"container cannot start: {waiting['reason']}: {waiting.get('message', '')}"
            )
    phase = status.get("phase")
    if phase == "Failed":
        return _End(ResultStatus.ERROR, None, f"pod failed: {status.get('reason', '')}: {status.get('message', '')}")
    if phase == "Succeeded":
        return _End(ResultStatus.SUCCEEDED, 0)
    return None


def _api_message(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        try:
            body = json.loads(exc.body or "{}")
            message = body.get("message") if isinstance(body, dict) else None
        except ValueError:
            message = None
        return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {exc}"
