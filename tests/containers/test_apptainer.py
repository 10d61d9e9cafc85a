"""The Apptainer runtime's command lines and SIF cache.

Apptainer/Singularity cannot be installed on these machines, so the real product
is NOT exercised here. A small stand-in executable (written below) takes its
place on the command line: it records every argv it gets, "builds" a SIF by
writing a file after a short delay, and for ``exec`` runs the trailing command on
the host in ``--pwd`` with the ``APPTAINERENV_*`` variables — enough to check the
exact command lines, the environment hand-over, the exit code and the cache's
build-once / atomic-rename behaviour, not Apptainer's isolation.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from integration._stack import memory_stack

import dagon
from dagon.agent import ApptainerRuntime, Execution
from dagon.agent.runtimes import ImageBuildError, SifCache, apptainer_argv
from dagon.core import RunState
from dagon.protocol import ResultStatus, RunId, TaskAssignment, TaskName
from dagon.protocol.transport import MemoryHub

STAND_IN = """#!{python}
# Stand-in for the apptainer CLI (the real one cannot be installed here).
import json, os, sys, time
from pathlib import Path
log = Path(__file__).with_suffix(".log")
args = sys.argv[1:]
with log.open("a") as f:
    f.write(json.dumps({{"argv": [Path(sys.argv[0]).name, *args],
                        "env": {{k: v for k, v in os.environ.items()
                                 if k.startswith(("APPTAINERENV_", "SINGULARITYENV_"))}}}}) + "\\n")
if args[0] == "build":
    target, source = args[-2], args[-1]
    time.sleep(0.3)
    if "broken" in source:
        sys.stderr.write("FATAL: could not fetch " + source + "\\n")
        sys.exit(255)
    Path(target).write_text("SIF of " + source)
    sys.exit(0)
assert args[0] == "exec", args
i, pwd = 1, None
while args[i].startswith("--"):
    if args[i] in ("--bind", "--overlay", "--pwd"):
        if args[i] == "--pwd":
            pwd = args[i + 1]
        i += 2
    else:
        i += 1
sif, command = args[i], args[i + 1:]
if not Path(sif).is_file():
    sys.stderr.write("FATAL: could not open image " + sif + "\\n")
    sys.exit(255)
prefix = "SINGULARITYENV_" if Path(sys.argv[0]).name == "singularity" else "APPTAINERENV_"
env = {{k[len(prefix):]: v for k, v in os.environ.items() if k.startswith(prefix)}}
env.setdefault("PATH", "/usr/bin:/bin")
os.chdir(pwd)
os.execvpe(command[0], command, env)
"""


def _stand_in(directory: Path, name: str = "apptainer") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(STAND_IN.format(python=sys.executable))
    path.chmod(0o755)
    return path


def _calls(stand_in: Path) -> list[dict[str, Any]]:
    log = stand_in.with_suffix(".log")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _execution(tmp_path: Path, command: str = "true", **options: Any) -> Execution:
    workdir = tmp_path / "scratch" / "r" / "t-1"
    (workdir / ".dagon").mkdir(parents=True, exist_ok=True)
    assignment = TaskAssignment(
        run=RunId("r"), workflow="w", task=TaskName("t"), attempt=1, runtime="apptainer", command=command,
        runtime_options={"image": "docker://busybox:1.36", **options},
    )  # fmt: skip
    return Execution(
        assignment=assignment, command=command, workdir=workdir, env={"GREETING": "hi"},
        stdout=workdir / ".dagon" / "stdout", stderr=workdir / ".dagon" / "stderr",
    )  # fmt: skip


def test_exec_command_line(tmp_path: Path) -> None:
    ex = _execution(
        tmp_path, "cat /data/in.txt > out.txt", binds=["/data:/data:ro", "/scratch/shared"], writable_tmpfs=True,
        nv=True, overlay="/ovl/task.img",
    )  # fmt: skip
    w = str(ex.workdir)
    assert apptainer_argv(ex, Path("/cache/busybox.sif")) == [
        "apptainer", "exec", "--cleanenv", "--bind", f"{w}:{w}", "--pwd", w,
        "--bind", "/data:/data:ro", "--bind", "/scratch/shared", "--writable-tmpfs", "--overlay", "/ovl/task.img",
        "--nv", "/cache/busybox.sif", "/bin/sh", "-c", "cat /data/in.txt > out.txt",
    ]  # fmt: skip
    plain = _execution(tmp_path, "true", rocm=True, contain=True, cleanenv=False, shell="/bin/bash")
    assert apptainer_argv(plain, Path("x.sif"), executable="singularity") == [
        "singularity", "exec", "--bind", f"{w}:{w}", "--pwd", w, "--rocm", "--contain", "x.sif", "/bin/bash", "-c",
        "true",
    ]  # fmt: skip


def test_symlinked_inputs_bind_their_targets_read_only(tmp_path: Path) -> None:
    producer = tmp_path / "scratch" / "r" / "p-1"
    producer.mkdir(parents=True)
    (producer / "data.txt").write_text("x")
    ex = _execution(tmp_path)
    (ex.workdir / "data.txt").symlink_to(producer / "data.txt")
    argv = apptainer_argv(ex, Path("i.sif"))
    assert argv[7:9] == ["--bind", f"{producer}:{producer}:ro"]


async def test_cache_builds_each_image_once_under_concurrency(tmp_path: Path) -> None:
    stand_in = _stand_in(tmp_path / "bin")
    cache = SifCache(tmp_path / "cache", executable=str(stand_in))
    paths = await asyncio.gather(*(cache.get("docker://busybox:1.36") for _ in range(5)))
    other = await cache.get("docker://alpine:3")
    assert len(set(paths)) == 1 and paths[0] != other
    assert paths[0].read_text() == "SIF of docker://busybox:1.36"
    builds = [c["argv"] for c in _calls(stand_in) if c["argv"][1] == "build"]
    assert [b[-1] for b in builds] == ["docker://busybox:1.36", "docker://alpine:3"]
    # built under a temporary name in the cache, then renamed into place
    assert builds[0][2] == "--force" and Path(builds[0][3]).parent == cache.root and builds[0][3].endswith(".tmp")
    assert cache.builds == 2
    assert sorted(p.name for p in cache.root.iterdir() if p.suffix == ".sif") == sorted([paths[0].name, other.name])
    assert not list(cache.root.glob("*.tmp"))
    # cached: no new build; "always" rebuilds; "never" never builds
    await cache.get("docker://busybox:1.36")
    assert cache.builds == 2
    await cache.get("docker://busybox:1.36", pull="always")
    assert cache.builds == 3
    with pytest.raises(ImageBuildError, match="pull policy is 'never'"):
        await cache.get("docker://debian:12", pull="never")


async def test_cache_failures_leave_nothing_behind(tmp_path: Path) -> None:
    stand_in = _stand_in(tmp_path / "bin")
    cache = SifCache(tmp_path / "cache", executable=str(stand_in))
    with pytest.raises(ImageBuildError, match="could not fetch docker://broken"):
        await cache.get("docker://broken:1")
    assert not list(cache.root.glob("*.sif")) and not list(cache.root.glob("*.tmp"))
    with pytest.raises(ImageBuildError, match="does not exist"):
        await cache.get(str(tmp_path / "absent.sif"))
    local = tmp_path / "mine.sif"
    local.write_text("sif")
    assert await cache.get(str(local)) == local
    # a cancelled build is killed and its temporary file removed
    task = asyncio.ensure_future(cache.get("docker://slow:1"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not list(cache.root.glob("*.tmp")) and not cache.path_for("docker://slow:1").exists()


async def test_pipeline_through_the_stand_in(hub: MemoryHub, tmp_path: Path) -> None:
    stand_in = _stand_in(tmp_path / "bin")
    runtime = ApptainerRuntime(cache=tmp_path / "sif-cache", executable=str(stand_in))
    wf = dagon.Workflow("hpc")
    wf.container("a", image="docker://busybox:1.36", runtime="apptainer", env={"WHO": "sif"},
                 command='echo "from $WHO ${HOME-nohome}" > msg.txt', writable_tmpfs=True)  # fmt: skip
    wf.container(
        "b", image="docker://busybox:1.36", runtime="apptainer", command="cat workflow:///a/msg.txt > copy.txt; exit 4"
    )
    async with memory_stack(hub, tmp_path, runtimes=[runtime]) as (coordinator, agents):
        assert "apptainer" in agents[0].capabilities.runtimes
        result = await coordinator.wait(await coordinator.submit(wf, keep_scratch=True))
    assert result.state is RunState.FAILED
    a, b = result["a"], result["b"]
    assert b.exit_code == 4 and b.state.name == "FAILED"
    assert (Path(b.workdir) / "copy.txt").read_text() == "from sif nohome\n"
    calls = _calls(stand_in)
    assert [c["argv"][1] for c in calls] == ["build", "exec", "exec"]
    first = calls[1]
    assert first["argv"][:7] == [
        "apptainer", "exec", "--cleanenv", "--bind", f"{a.workdir}:{a.workdir}", "--pwd", a.workdir,
    ]  # fmt: skip
    assert "--writable-tmpfs" in first["argv"]
    # the task's variables travel as APPTAINERENV_*, never on the command line
    assert first["env"]["APPTAINERENV_WHO"] == "sif" and "APPTAINERENV_DAGON_TASK" in first["env"]
    assert not any("WHO=" in part for part in first["argv"])


async def test_runtime_errors(tmp_path: Path) -> None:
    stand_in = _stand_in(tmp_path / "bin", "singularity")
    runtime = ApptainerRuntime(cache=tmp_path / "c", executable=str(stand_in))
    outcome = await runtime.run(_execution(tmp_path, image="docker://broken:2"))
    assert outcome.status is ResultStatus.ERROR and "could not fetch" in outcome.error
    ok = await runtime.run(_execution(tmp_path, 'echo "$GREETING"'))
    assert ok.status is ResultStatus.SUCCEEDED, ok
    assert _calls(stand_in)[-1]["env"] == {"SINGULARITYENV_GREETING": "hi"}
