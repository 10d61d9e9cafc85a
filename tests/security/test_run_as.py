"""Issue 15, attack 5: a task running as an unprivileged user (``--run-as``) replaces its ``.dagon``
with a symlink; the root agent must not write through it. Real processes, real Mosquitto."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _broker import missing

from ._deploy import Deployment, task_results

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's own tmp dirs are private to root)."""
    if os.geteuid() != 0:
        missing("CI runs the suite as root; run_as needs it")
    path = Path(tempfile.mkdtemp(prefix="dagon-run-as-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_a_task_cannot_make_the_root_agent_write_through_its_links(
    deployment: Deployment, open_dir: Path
) -> None:
    target = open_dir / "target"  # stands for /etc: root may write there, nobody may not
    target.mkdir(mode=0o755)
    (target / "keep.txt").write_text("untouched\n")
    os.symlink(target / "keep.txt", open_dir / "keep-link")
    deployment.start_coordinator()
    deployment.start_agent("jailed", "--run-as", "nobody", "--scratch", str(open_dir / "scratch"))
    swap_dir = f"mv .dagon .old; ln -s {target} .dagon; echo out > out.txt"
    swap_file = (
        f"mkdir -p .mine; mv .dagon .old; mv .mine .dagon; ln -s {target}/keep.txt .dagon/manifest.json; echo o > o.txt"
    )
    wf = deployment.workflow("escape", [("dir", swap_dir, {}), ("file", swap_file, {})])
    run, _ = deployment.submit(wf)
    results = await task_results(deployment.url, run)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]  # no manifest.json written into it
    assert (target / "keep.txt").read_text() == "untouched\n"
    refused = results["dir"]
    assert refused["state"] == "failed" and "replaced or removed its .dagon" in refused["error"], refused
    # the second task's own .dagon is a directory it made: the link inside was replaced, not followed
    assert (target / "keep.txt").stat().st_uid == 0
    assert results["file"]["state"] in ("succeeded", "failed"), results["file"]


async def test_a_task_run_as_another_user_gets_only_the_secrets_it_references(
    deployment: Deployment, open_dir: Path
) -> None:
    """Issue 15, 3: "also under --run-as" — the agent's environment and unreferenced secrets stay out."""
    deployment.start_coordinator()
    env = {
        "DAGON_SECRET_API": "api-5e1f0c9d8b7a",
        "DAGON_SECRET_OTHER": "other-3c2b1a0f9e8d",
        "CLOUD_TOKEN": "tok-77aa",
    }
    deployment.start_agent("jailed", "--run-as", "nobody", "--scratch", str(open_dir / "scratch"), env=env)
    snoop = (
        "env > env.txt; id -un > user.txt; tr '\\0' ' ' < /proc/$$/cmdline > cmdline.txt;"
        ' echo "secret://API" >/dev/null'
    )
    run, out = deployment.submit(deployment.workflow("snoop", [("snoop", snoop, {})]))
    assert out.returncode == 0, out.stderr + deployment.logs()
    assert (await task_results(deployment.url, run))["snoop"]["state"] == "succeeded"
    workdir = open_dir / "scratch" / run / "snoop-1"
    assert (workdir / "user.txt").read_text() == "nobody\n"
    seen = (workdir / "env.txt").read_text()
    assert "DAGON_SECRET_API=api-5e1f0c9d8b7a" in seen  # referenced: in its environment …
    assert "api-5e1f0c9d8b7a" not in (workdir / "cmdline.txt").read_text()  # … never in its argv
    for value in ("other-3c2b1a0f9e8d", "tok-77aa", "DAGON_HOME"):
        assert value not in seen, seen
