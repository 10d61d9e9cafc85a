"""``__all__`` is curated both ways, and the layering rules hold.

Every module of the four packages says what it offers in ``__all__`` (kept sorted by ruff's
RUF022): everything listed exists, a package lists every public name it defines or imports
from dagon, and a module's public name that another module imports is listed by it.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGES = [
    "dagon",
    "dagon.cli",
    "dagon.core",
    "dagon.agent",
    "dagon.agent.runtimes",
    "dagon.protocol",
    "dagon.protocol.transport",
]
ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"core": "dagon.core", "agent": "dagon.agent", "protocol": "dagon.protocol", "dagon": "dagon"}
NOT_MODULES = {"dagon.cli.__main__"}  # ``python -m dagon.cli``: a script, nothing to import


def _modules() -> Iterator[tuple[str, Path]]:
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            name = ".".join([package, *parts])
            if name not in NOT_MODULES:
                yield name, path


MODULES = dict(_modules())


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            assert isinstance(node.value, ast.List | ast.Tuple), "__all__ is a literal list"
            return [ast.literal_eval(e) for e in node.value.elts]
    return None


def test_every_package_is_checked() -> None:
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert set(PACKAGES) <= packages


@pytest.mark.parametrize("name", sorted(MODULES))
def test_all_lists_what_exists(name: str) -> None:
    declared = _declared_all(ast.parse(MODULES[name].read_text()))
    assert declared is not None, f"{name} has no __all__: say what the module offers"
    module = importlib.import_module(name)
    assert list(module.__all__) == declared
    assert len(declared) == len(set(declared)), "duplicate names in __all__"
    missing = [n for n in declared if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ lists names the module does not have"


@pytest.mark.parametrize("name", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"))
def test_packages_list_every_public_name(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    declared = set(_declared_all(tree) or ())
    public: set[str] = set()
    # module level, including ``if TYPE_CHECKING:`` imports of lazily loaded names
    statements = [s for node in tree.body for s in (node.body if isinstance(node, ast.If) else [node])]
    for node in statements:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagon"):
            public.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            public.add(node.name)
    unlisted = sorted(n for n in public if not n.startswith("_") and n not in declared)
    assert unlisted == [], f"{name} has public names missing from __all__ (list them or make them private)"


def test_modules_list_what_other_modules_import() -> None:
    declared = {name: set(_declared_all(ast.parse(path.read_text())) or ()) for name, path in MODULES.items()}
    unlisted: set[str] = set()
    for importer, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module not in MODULES or node.module == importer:
                continue
            if MODULES[node.module].name == "__init__.py":
                continue  # a package's names are checked above
            for alias in node.names:
                if not alias.name.startswith("_") and alias.name not in declared[node.module]:
                    unlisted.add(f"{node.module}.{alias.name} (imported by {importer})")
    assert sorted(unlisted) == [], "public names used across modules belong in their module's __all__"


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
