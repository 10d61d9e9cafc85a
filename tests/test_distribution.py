"""The distribution's name: `dagon` on PyPI is an unrelated project, so dagon ships as `dagon-engine`
(issue 14, point 11) — while `import dagon` and the `dagon` / `dagon-agent` commands stay."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import dagon

ROOT = Path(__file__).resolve().parent.parent
NAME = "dagon-engine"


def test_the_distribution_is_dagon_engine_and_every_install_line_says_so() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == NAME
    assert project["optional-dependencies"]["all"][0].startswith(f"{NAME}[")
    assert set(project["scripts"]) == {"dagon", "dagon-agent"}
    assert importlib.metadata.version(NAME) == dagon.__version__  # what is installed here is this name
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # the old install line (the bare name followed by an extra) would fetch the unrelated project
    old = re.compile(r"(?<![\w./-])dagon\[[a-z]")
    stale = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".toml", ".txt", ".sh", ".cfg", ".yaml", ".yml"} or path.name in {
            "Dockerfile",
            "setup",
            "run",
            "typecheck",
            "arm64-root",
        }:
            text = path.read_text(errors="replace")
            stale += [f"{name}: {m.group(0)}" for m in old.finditer(text)]
    assert stale == []
    assert f"pip install --no-cache-dir '{NAME}[k8s]'" in (ROOT / "examples/kubernetes/Dockerfile").read_text()
    assert f"'{NAME}[k8s]'" in (ROOT / "README.md").read_text()


def test_the_wheel_is_named_dagon_engine_and_installs_the_dagon_commands(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("dagon_engine-") and wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    assert "dagon/__init__.py" in names and "dagon/core/__init__.py" in names  # `import dagon` as before
    assert "dagon = dagon.cli:main" in scripts and "dagon-agent = dagon.cli:agent_main" in scripts
