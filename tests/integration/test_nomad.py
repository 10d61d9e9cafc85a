"""The Nomad runtime against a fake of Nomad's documented HTTP API (no real Nomad).

See :mod:`._fake_nomad` for exactly what the fake implements; the tasks it
"allocates" run for real as local processes, so staged data really flows.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from _keys import admit

import dagon
from dagon._keys import coordinator_signer, enroll
from dagon.agent import Execution
from dagon.agent.runtimes import NomadRuntime
from dagon.agent.runtimes._jobs import Options
from dagon.core import RunState, Task, TaskState
from dagon.protocol import ResultStatus, TaskAssignment
from dagon.protocol.transport import MemoryHub

from ._fake_nomad import FakeNomad
from ._stack import memory_stack

pytestmark = pytest.mark.nomad

TOKEN = "s3cr3t-nomad-acl-token"


@pytest.fixture(autouse=True)
def _collect() -> Iterator[None]:
    # Subprocess pipes left open would warn when garbage-collected, maybe in another test: collect here.
    yield
    gc.collect()


@pytest.fixture
async def nomad() -> AsyncIterator[FakeNomad]:
    async with FakeNomad(token=TOKEN) as fake:
        yield fake


def runtime(nomad: FakeNomad, scratch: Path, **kwargs: object) -> NomadRuntime:
    return NomadRuntime(
        scratch=scratch, address=nomad.url, token=TOKEN, region="edge", datacenters=["dc-lab"], node="pi-1",
        wait=5, kill_timeout=0.5, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def nomad_task(name: str, command: str, **kwargs: object) -> Task:
    return Task(name=name, command=command, runtime="nomad", runtime_options={"driver": "raw_exec"}, **kwargs)  # type: ignore[arg-type]


async def test_pipeline_passes_a_file_between_jobs(
    hub: MemoryHub, tmp_path: Path, nomad: FakeNomad, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wf = dagon.Workflow("nomad")
    wf.add(nomad_task("make", "sleep 0.3; echo payload > data.txt; echo made; echo noise >&2"))
    wf.add(
        nomad_task("use", 'tr a-z A-Z < workflow:///make/data.txt > copy.txt; echo "$GREETING"', env={"GREETING": "hi"})
    )
    wf.add(nomad_task("bad", "echo broken >&2; exit 7", after=("make",)))
    rt = runtime(nomad, tmp_path / "agent0" / "scratch")
    async with memory_stack(hub, tmp_path, runtimes=[rt]) as (coordinator, agents):
        assert "nomad" in agents[0].capabilities.runtimes
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))

    assert result.state is RunState.FAILED
    make, use, bad = result["make"], result["use"], result["bad"]
    assert make.state is TaskState.SUCCEEDED and use.state is TaskState.SUCCEEDED
    assert (Path(use.workdir) / "copy.txt").read_text() == "PAYLOAD\n"
    # Nomad keeps stdout and stderr apart: each lands in its own file
    assert (Path(make.workdir) / ".dagon" / "stdout").read_text() == "made\n"
    assert (Path(make.workdir) / ".dagon" / "stderr").read_text() == "noise\n"
    assert (Path(use.workdir) / ".dagon" / "stdout").read_text() == "hi\n"
    assert bad.state is TaskState.FAILED and bad.exit_code == 7 and "broken" in bad.stderr_tail

    # every job was registered as a one-task batch job, then purged
    registered = nomad.of("POST", "/v1/jobs")
    assert len(registered) == 3
    assert sorted(nomad.purged) == sorted(a.job_id for a in nomad.allocs.values()) and not nomad.jobs
    assert all(r.query == {"region": "edge"} for r in registered)
    deletes = nomad.of("DELETE", "/v1/job/[^/]+")
    assert len(deletes) == 3 and all(r.query.get("purge") == "true" for r in deletes)
    # the ACL token went with every request and never into the logs
    assert all(r.headers.get("X-Nomad-Token") == TOKEN for r in nomad.requests)
    assert TOKEN not in caplog.text and TOKEN not in repr(rt)
    # allocations were followed with blocking queries: index from X-Nomad-Index and a wait
    queries = nomad.of("GET", "/v1/job/[^/]+/allocations")
    blocking = [q for q in queries if int(q.query.get("index", "0")) > 0]
    assert blocking and all(q.query["wait"] == "5s" for q in blocking)
    # …and not polled: a handful of requests per job (state changes), not one per tick
    assert len(queries) <= 3 * 4, [(q.path, q.query) for q in queries]
    logs = nomad.of("GET", "/v1/client/fs/logs/[^/]+")
    assert {q.query["type"] for q in logs} == {"stdout", "stderr"} and all(q.query["plain"] == "true" for q in logs)


def test_job_json_follows_the_documented_fields(tmp_path: Path) -> None:
    rt = NomadRuntime(
        scratch=tmp_path / "scratch", region="edge", namespace="science", datacenters=["dc1"], node="pi-1",
        scratch_volume="dagon-scratch",
    )  # fmt: skip
    ex = execution(
        tmp_path, "echo hi", {"image": "local/busybox", "devices": ["/dev/ttyACM0"]}, cpus=0.5, memory=64 << 20
    )
    job = rt._job(ex, Options("nomad", ex.assignment.runtime_options, frozenset({"image", "devices"})))
    group = job["TaskGroups"][0]
    task = group["Tasks"][0]
    assert job["Type"] == "batch" and job["Datacenters"] == ["dc1"]
    assert job["Region"] == "edge" and job["Namespace"] == "science"
    assert job["Constraints"] == [{"LTarget": "${node.unique.name}", "RTarget": "pi-1", "Operand": "="}]
    assert group["RestartPolicy"] == {"Attempts": 0, "Mode": "fail"}
    assert group["Volumes"] == {"scratch": {"Name": "scratch", "Type": "host", "Source": "dagon-scratch"}}
    assert task["VolumeMounts"] == [{"Volume": "scratch", "Destination": str(tmp_path / "scratch"), "ReadOnly": False}]
    assert task["Driver"] == "docker"
    assert task["Config"]["image"] == "local/busybox" and task["Config"]["work_dir"] == str(ex.workdir)
    assert task["Config"]["command"] == "/bin/sh" and task["Config"]["args"] == ["-c", "echo hi"]
    assert task["Config"]["devices"] == [{"host_path": "/dev/ttyACM0", "container_path": "/dev/ttyACM0"}]
    assert task["Resources"] == {"CPU": 500, "MemoryMB": 64}


def execution(
    tmp_path: Path,
    command: str,
    options: dict[str, object],
    *,
    cpus: float = 1.0,
    memory: int = 0,
    timeout: float | None = None,
) -> Execution:
    workdir = tmp_path / "scratch" / "run1" / "t-1"
    (workdir / ".dagon").mkdir(parents=True, exist_ok=True)
    a = TaskAssignment(
        run="run1", workflow="wf", task="t", attempt=1, runtime="nomad", command=command,  # type: ignore[arg-type]
        runtime_options=options, cpus=cpus, memory=memory, timeout=timeout,
    )  # fmt: skip
    return Execution(
        assignment=a, command=command, workdir=workdir, env={"DAGON_TASK": "t"},
        stdout=workdir / ".dagon" / "stdout", stderr=workdir / ".dagon" / "stderr",
    )  # fmt: skip


async def test_cancel_purges_the_job_and_reraises(tmp_path: Path, nomad: FakeNomad) -> None:
    rt = runtime(nomad, tmp_path / "scratch")
    try:
        job = asyncio.ensure_future(rt.run(execution(tmp_path, "sleep 60", {"driver": "raw_exec"})))
        await asyncio.wait_for(nomad.started.wait(), 20)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    finally:
        await rt.aclose()
    (alloc,) = nomad.allocs.values()
    assert nomad.purged == [alloc.job_id] and not nomad.jobs
    assert await nomad.stopped(alloc)  # the "client" stopped the task after the deregistration


async def test_timeout_purges_the_job(tmp_path: Path, nomad: FakeNomad) -> None:
    rt = runtime(nomad, tmp_path / "scratch")
    ex = execution(tmp_path, "echo started; sleep 60", {"driver": "raw_exec"}, timeout=1.0)
    try:
        outcome = await rt.run(ex)
    finally:
        await rt.aclose()
    assert outcome.status is ResultStatus.TIMEOUT
    (alloc,) = nomad.allocs.values()
    assert nomad.purged == [alloc.job_id]
    assert await nomad.stopped(alloc)


async def test_wrong_token_is_a_clear_error(tmp_path: Path, nomad: FakeNomad) -> None:
    rt = NomadRuntime(scratch=tmp_path / "scratch", address=nomad.url, token="wrong")
    try:
        outcome = await rt.run(execution(tmp_path, "true", {"driver": "raw_exec"}))
    finally:
        await rt.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert "403" in outcome.error and "Permission denied" in outcome.error and "wrong" not in outcome.error
    assert not nomad.jobs


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option 'image' is required"),
        ({"driver": "podman"}, "option 'driver' must be one of"),
        ({"driver": "exec", "image": "busybox"}, "option 'image' needs driver 'docker'"),
        ({"image": "busybox", "cpu_mhz": 0}, "option 'cpu_mhz' must be a whole number of at least 1"),
        ({"driver": "raw_exec", "datacenters": "dc1"}, "option 'datacenters' must be a non-empty list"),
        ({"driver": "raw_exec", "gpu": True}, "unknown nomad option(s) ['gpu']"),
    ],
)
async def test_bad_options_are_an_error_naming_the_option(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    rt = NomadRuntime(scratch=tmp_path / "scratch", address="http://127.0.0.1:9")  # nothing is contacted
    outcome = await rt.run(execution(tmp_path, "true", options))
    await rt.aclose()
    assert outcome.status is ResultStatus.ERROR
    assert message in outcome.error


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: .ci/setup installs it")
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


async def test_mutual_tls_with_ca_and_client_certificate(tmp_path: Path, pki: Path) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    server.load_cert_chain(pki / "server.pem", pki / "server.key")
    server.verify_mode = ssl.CERT_REQUIRED  # like Nomad's verify_https_client
    async with FakeNomad(ssl_context=server) as fake:
        assert fake.url.startswith("https://")
        rt = NomadRuntime(
            scratch=tmp_path / "scratch", address=fake.url, ca_file=str(pki / "ca.pem"),
            client_cert=str(pki / "client.pem"), client_key=str(pki / "client.key"), wait=5,
        )  # fmt: skip
        try:
            ex = execution(tmp_path, "echo over-tls", {"driver": "raw_exec"})
            outcome = await rt.run(ex)
        finally:
            await rt.aclose()
        assert outcome.status is ResultStatus.SUCCEEDED, outcome
        assert ex.stdout.read_text() == "over-tls\n"
        # without the client certificate the server refuses the handshake: a clear error, no job
        bare = NomadRuntime(scratch=tmp_path / "scratch", address=fake.url, ca_file=str(pki / "ca.pem"))
        try:
            refused = await bare.run(execution(tmp_path, "true", {"driver": "raw_exec"}))
        finally:
            await bare.aclose()
        assert refused.status is ResultStatus.ERROR and "cannot reach Nomad" in refused.error
        assert len(fake.allocs) == 1


@pytest.mark.mosquitto
async def test_dagon_agent_process_configured_by_a_nomad_table(mosquitto: Any, tmp_path: Path) -> None:
    """A real ``dagon-agent`` process, its TOML ``[nomad]`` table, a real Mosquitto, the fake Nomad."""
    async with FakeNomad(token=TOKEN) as fake:
        home = tmp_path / "edge"
        home.mkdir()
        config = home / "agent.toml"
        config.write_text(f'[nomad]\naddress = "{fake.url}"\ntoken_env = "EDGE_NOMAD_TOKEN"\nwait = 5\n')
        cmd = [
            sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())",
            "--broker", mosquitto.url, "--id", "edge", "--scratch", str(home / "scratch"), "--config", str(config),
        ]  # fmt: skip
        env = dict(os.environ, DAGON_HOME=str(home), EDGE_NOMAD_TOKEN=TOKEN, DAGON_LOG_LEVEL="DEBUG")
        coordinator_signer(tmp_path / "client")  # the client's coordinator key, enrolled with the agent
        enroll(home, tmp_path / "client" / "keys" / "coordinator.pub")
        admit(tmp_path / "client", "edge", home)  # and the agent with the client's coordinator
        with (home / "agent.log").open("wb") as log:
            agent = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
                assert client.coordinator is not None
                async with asyncio.timeout(20):
                    await client.coordinator.wait_for_agents(1)
                wf = dagon.Workflow("nomad-cli")
                wf.add(nomad_task("make", "echo from-nomad > data.txt"))
                wf.add(nomad_task("use", "cat workflow:///make/data.txt > copy.txt"))
                result = await (await client.submit(wf, keep_scratch=True)).wait()
        finally:
            stop_process(agent)
    assert result.ok, result.cause
    assert (Path(result["use"].workdir) / "copy.txt").read_text() == "from-nomad\n"
    assert len(fake.purged) == 2 and all(r.headers.get("X-Nomad-Token") == TOKEN for r in fake.requests)
    assert TOKEN not in (home / "agent.log").read_text()  # DEBUG logging, and still no token
