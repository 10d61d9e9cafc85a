"""Every name a package exports exists, and the layering rules hold."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGES = [
    "dagon",
    "dagon.core",
    "dagon.agent",
    "dagon.agent.runtimes",
    "dagon.protocol",
    "dagon.protocol.transport",
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", PACKAGES)
def test_all_exports_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicate names in __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == []


def _imports(folder: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_dependencies_point_one_way() -> None:
    protocol, core, agent = _imports("protocol"), _imports("core"), _imports("agent")
    assert not {m for m in protocol if m.startswith(("dagon.core", "dagon.agent"))}
    assert not {m for m in core if m.startswith("dagon.agent")}
    assert not {m for m in agent if m.startswith("dagon.core")}
    assert not {m for m in core | agent if m == "dagon" or m.startswith("dagon._")}
    # one transport module wraps aiomqtt
    sources = [p for folder in ("core", "agent", "protocol", "dagon") for p in (ROOT / folder).rglob("*.py")]
    users = [p for p in sources if "import aiomqtt" in p.read_text()]
    assert [p.relative_to(ROOT).as_posix() for p in users] == ["protocol/transport/_mqtt.py"]
