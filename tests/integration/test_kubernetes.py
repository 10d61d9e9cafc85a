"""The Kubernetes runtime against kmock (an in-memory Kubernetes API emulator).

No real API server, kubelet or container runtime is involved: kmock serves the
pods API and its watch stream, and :class:`Kubelet` plays the kubelet (runs the
pod's command as a local process, patches the status, serves the log).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kmock
import pytest

import dagon
from dagon.agent import Execution
from dagon.agent.runtimes import KubernetesRuntime
from dagon.core import RunState, Task, TaskState
from dagon.protocol import ResultStatus, TaskAssignment
from dagon.protocol.transport import MemoryHub

from ._kubelet import Kubelet
from ._stack import memory_stack

pytestmark = pytest.mark.kubernetes

TOKEN = "kmock-test-token"


@pytest.fixture(autouse=True)
def _collect() -> Iterator[None]:
    # Subprocess pipes left open would warn when garbage-collected, maybe in another test: collect here.
    yield
    gc.collect()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[kmock.KubernetesEmulator, Kubelet, Path]]:
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as srv:
        emu.resources["v1/pods"] = kmock.ResourceInfo(namespaced=True, kind="Pod")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{str(srv.url).rstrip("/")}"}}}}]
users: [{{name: tester, user: {{token: {TOKEN}}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: tester}}}}]
current-context: kmock
"""
        )
        async with Kubelet(emu, srv) as kubelet:
            yield emu, kubelet, kubeconfig


def runtime(tmp_path: Path, kubeconfig: Path, scratch: Path | None = None) -> KubernetesRuntime:
    return KubernetesRuntime(
        scratch=scratch or tmp_path / "agent0" / "scratch",
        namespace="dagon-test",
        in_cluster=False,
        kubeconfig=str(kubeconfig),
        node_name="node-a",
        watch_timeout=30,
    )


def k8s_task(name: str, command: str, **kwargs: object) -> Task:
    return Task(name=name, command=command, runtime="kubernetes", runtime_options={"image": "busybox"}, **kwargs)  # type: ignore[arg-type]


async def test_pipeline_passes_a_file_between_pods(
    hub: MemoryHub, tmp_path: Path, cluster: tuple[kmock.KubernetesEmulator, Kubelet, Path]
) -> None:
    emu, kubelet, kubeconfig = cluster
    wf = dagon.Workflow("k8s")
    wf.add(k8s_task("make", "echo payload > data.txt; echo made; echo noise >&2"))
    use_command = "sleep 1; tr a-z A-Z < workflow:///make/data.txt > copy.txt; cat copy.txt"
    wf.add(k8s_task("use", use_command, env={"GREETING": "hi"}))
    wf.add(k8s_task("bad", "echo broken >&2; exit 7", after=("make",)))
    rt = runtime(tmp_path, kubeconfig)
    async with memory_stack(hub, tmp_path, runtimes=[rt]) as (coordinator, agents):
        assert "kubernetes" in agents[0].capabilities.runtimes
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))

    assert result.state is RunState.FAILED
    make, use, bad = result["make"], result["use"], result["bad"]
    assert make.state is TaskState.SUCCEEDED and use.state is TaskState.SUCCEEDED
    assert (Path(use.workdir) / "copy.txt").read_text() == "PAYLOAD\n"
    # the merged container log lands in the stdout file
    assert (Path(make.workdir) / ".dagon" / "stdout").read_text() == "made\nnoise\n"
    assert (Path(use.workdir) / ".dagon" / "stdout").read_text() == "PAYLOAD\n"
    # a failing container: its exit code, FAILED, and the log tail as the stderr tail
    assert bad.state is TaskState.FAILED and bad.exit_code == 7 and "broken" in bad.stderr_tail

    assert len(kubelet.pods) == 3
    pod = next(p for p in kubelet.pods.values() if p["metadata"]["annotations"]["dagon.io/task"] == "use")
    scratch = str(tmp_path / "agent0" / "scratch")
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert pod["metadata"]["namespace"] == "dagon-test"
    assert pod["metadata"]["labels"]["dagon.io/task"] == "use"
    assert pod["metadata"]["labels"]["dagon.io/attempt"] == "1"
    assert spec["restartPolicy"] == "Never"
    assert spec["volumes"][0] == {"name": "scratch", "hostPath": {"path": scratch, "type": "Directory"}}
    assert container["volumeMounts"][0] == {"name": "scratch", "mountPath": scratch}
    assert container["workingDir"] == use.workdir
    assert container["command"][:2] == ["/bin/sh", "-c"] and "workflow://" not in container["command"][2]
    assert {"name": "GREETING", "value": "hi"} in container["env"]
    assert container["resources"]["requests"] == {"cpu": "1000m"} == container["resources"]["limits"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchFields"][0]["values"] == ["node-a"]

    requests = list(emu)
    # every pod was deleted once it ended
    deletes = {r.name for r in requests if r.method == kmock.method.DELETE}
    assert deletes == set(kubelet.pods)
    # phases were watched (lowercase watch=true with a field selector), never polled by GET on the pod;
    # a pod already finished at the first list needs no watch, "use" (sleep 1) always does
    watches = {
        r.params["fieldSelector"] for r in requests if r.params.get("watch") == "true" and "fieldSelector" in r.params
    }
    assert f"metadata.name={pod['metadata']['name']}" in watches
    assert watches <= {f"metadata.name={n}" for n in kubelet.pods}
    assert not [r for r in requests if r.action == kmock.action.FETCH and r.subresource is None]
    # kubeconfig credentials were used
    ours = [r for r in requests if r.resource is not None and r.method == kmock.method.POST]
    assert ours and all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in ours)


async def test_timeout_deletes_the_pod(
    hub: MemoryHub, tmp_path: Path, cluster: tuple[kmock.KubernetesEmulator, Kubelet, Path]
) -> None:
    emu, kubelet, kubeconfig = cluster
    wf = dagon.Workflow("k8s-timeout")
    wf.add(k8s_task("slow", "echo started; sleep 60", timeout=1.5))
    async with memory_stack(hub, tmp_path, runtimes=[runtime(tmp_path, kubeconfig)]) as (coordinator, _):
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    slow = result["slow"]
    assert slow.state is TaskState.FAILED and "timed out" in slow.cause, slow
    (name,) = kubelet.pods
    assert [r.params.get("gracePeriodSeconds") for r in emu if r.method == kmock.method.DELETE] == ["0"]
    await kubelet_saw_deletion(kubelet, name)


async def kubelet_saw_deletion(kubelet: Kubelet, name: str) -> None:
    """The DELETED event reaches the kubelet's watch asynchronously; it then kills the process."""
    for _ in range(200):
        if name in kubelet.killed:
            break
        await asyncio.sleep(0.05)
    assert name in kubelet.deleted and name in kubelet.killed


def execution(tmp_path: Path, command: str, options: dict[str, object]) -> Execution:
    workdir = tmp_path / "scratch" / "run1" / "t-1"
    (workdir / ".dagon").mkdir(parents=True)
    a = TaskAssignment(
        run="run1", workflow="wf", task="t", attempt=1, runtime="kubernetes", command=command,  # type: ignore[arg-type]
        runtime_options=options,
    )  # fmt: skip
    return Execution(
        assignment=a, command=command, workdir=workdir, env={"DAGON_TASK": "t"},
        stdout=workdir / ".dagon" / "stdout", stderr=workdir / ".dagon" / "stderr",
    )  # fmt: skip


async def test_cancel_deletes_the_pod_and_reraises(
    tmp_path: Path, cluster: tuple[kmock.KubernetesEmulator, Kubelet, Path]
) -> None:
    emu, kubelet, kubeconfig = cluster
    rt = runtime(tmp_path, kubeconfig, scratch=tmp_path / "scratch")
    try:
        job = asyncio.ensure_future(rt.run(execution(tmp_path, "sleep 60", {"image": "busybox"})))
        await asyncio.wait_for(kubelet.started.wait(), 20)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    finally:
        await rt.aclose()
    (name,) = kubelet.pods
    assert [r.name for r in emu if r.method == kmock.method.DELETE] == [name]
    await kubelet_saw_deletion(kubelet, name)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option 'image' is required"),
        ({"image": "busybox", "gpu": 1}, "unknown kubernetes option(s) ['gpu']"),
        ({"image": "busybox", "devices": ["ttyACM0"]}, "option 'devices' must be a list of absolute paths"),
        ({"image": "busybox", "privileged": "yes"}, "option 'privileged' must be true or false"),
        ({"image": "busybox", "image_pull_policy": "sometimes"}, "option 'image_pull_policy' must be one of"),
    ],
)
async def test_bad_options_are_an_error_naming_the_option(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    # Checked before any connection: no cluster and no credentials needed.
    rt = KubernetesRuntime(scratch=tmp_path / "scratch", in_cluster=False, kubeconfig=str(tmp_path / "missing"))
    outcome = await rt.run(execution(tmp_path, "true", options))
    assert outcome.status is ResultStatus.ERROR
    assert message in outcome.error


async def test_missing_credentials_are_a_clear_error(tmp_path: Path) -> None:
    rt = KubernetesRuntime(scratch=tmp_path / "scratch", in_cluster=False, kubeconfig=str(tmp_path / "missing"))
    outcome = await rt.run(execution(tmp_path, "true", {"image": "busybox"}))
    assert outcome.status is ResultStatus.ERROR and "cannot load Kubernetes credentials" in outcome.error


async def test_in_cluster_credentials_come_from_the_service_account_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    rt = KubernetesRuntime(
        scratch=tmp_path,
        environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
        token_file=str(tmp_path / "token"),
        ca_file=str(tmp_path / "ca.crt"),
    )
    cfg = await rt.configuration()  # in_cluster chosen because KUBERNETES_SERVICE_HOST is set
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.api_key["BearerToken"] == "Bearer sa-token"
    assert cfg.ssl_ca_cert == str(tmp_path / "ca.crt")


async def test_watch_is_resumed_when_the_server_ends_it_and_relisted_on_410(
    tmp_path: Path, cluster: tuple[kmock.KubernetesEmulator, Kubelet, Path]
) -> None:
    emu, _, kubeconfig = cluster
    # The first two watches on our pod are answered by the test: one stream the server simply ends
    # (as at timeoutSeconds), then one "410 Gone" (resourceVersion too old). The third is kmock's own.
    scripted: list[int] = []

    def first_two_watches(request: kmock.Request) -> bool:
        if request.action != kmock.action.WATCH or "fieldSelector" not in request.params:
            return False
        if request.id not in scripted and len(scripted) < 2:
            scripted.append(request.id)
        return request.id in scripted

    async def answer(request: kmock.Request) -> AsyncIterator[object]:
        yield b""
        if request.id == scripted[-1] and len(scripted) == 2:
            yield {
                "type": "ERROR",
                "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"},
            }

    emu[first_two_watches] << answer  # type: ignore[operator]  # kmock takes a callable (documented), its stubs say otherwise
    rt = runtime(tmp_path, kubeconfig, scratch=tmp_path / "scratch")
    try:
        outcome = await rt.run(execution(tmp_path, "sleep 2; echo resumed", {"image": "busybox"}))
    finally:
        await rt.aclose()
    assert outcome.status is ResultStatus.SUCCEEDED, outcome
    assert (tmp_path / "scratch" / "run1" / "t-1" / ".dagon" / "stdout").read_text() == "resumed\n"
    ours = [r for r in emu if r.action in (kmock.action.LIST, kmock.action.WATCH) and "fieldSelector" in r.params]
    kinds = [r.action for r in ours]
    assert kinds == [kmock.action.LIST, kmock.action.WATCH, kmock.action.WATCH, kmock.action.LIST, kmock.action.WATCH]
    # the resumed watch continues from the version the list reported
    assert ours[1].params.get("resourceVersion") == ours[2].params.get("resourceVersion") == "..."
