"""The package's imports point one way: no cycle, and no import against the declared layers.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy
import is still a dependency. The layers are the README's Architecture section.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_dbbranch"

#: Lowest first. A module may import its own unit and units of lower layers only.
LAYERS: list[set[str]] = [
    {"_version", "errors", "progress"},
    {"conninfo", "names"},
    {"settings"},
    {"schema", "server"},
    {"backends", "migrations"},
    {"branching"},
    {"review", "emulator"},
    {"pytest_plugin", "cli"},
]

#: Narrower rules on top of the layers.
ONLY: dict[str, set[str]] = {
    # A separate product: the core never depends on it, and it needs little of the core.
    "emulator": {"_version", "errors", "conninfo", "server"},
    # Reads a catalog into a model; knows nothing of branches.
    "schema": set(),
}
#: Backends take explicit arguments; only ``open_backend`` reads the plugin's settings.
NO_SETTINGS = {
    "backends.base",
    "backends.postgres",
    "backends.lakebase",
    "backends.lakebase_api",
    "backends.lakebase_errors",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def targets_of(name: str, is_package: bool, node: ast.AST, modules: set[str]) -> set[str]:
    """Package modules one import statement of module ``name`` refers to."""
    here = name.split(".") if name else []
    base = here if is_package else here[:-1]
    if isinstance(node, ast.ImportFrom) and node.level:
        anchor = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*anchor, *(node.module.split(".") if node.module else [])])
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_dbbranch"):
        prefix = (node.module or "").removeprefix("pytest_dbbranch").strip(".")
    elif isinstance(node, ast.Import):
        return {
            a.name.removeprefix("pytest_dbbranch").strip(".")
            for a in node.names
            if a.name.startswith("pytest_dbbranch")
        } - {name}
    else:
        return set()
    found = set()
    for alias in node.names:
        full = f"{prefix}.{alias.name}".strip(".")
        found.add(full if full in modules else prefix)
    return found - {name}


def imports() -> dict[str, set[str]]:
    """Module -> package modules it imports (dotted, relative to the package)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text())):
            edges[name] |= targets_of(name, path.name == "__init__.py", node, set(paths))
    return edges


def unit(module: str) -> str:
    return module.split(".")[0]


def layer(module: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit(module) in units:
            return index
    raise AssertionError(f"{module!r} is in no declared layer: add its unit to LAYERS")


def test_every_module_has_a_layer() -> None:
    for module in imports():
        if module:
            layer(module)


def test_no_module_imports_the_package_top() -> None:
    offenders = sorted(m for m, targets in imports().items() if "" in targets and m)
    assert not offenders, f"import the module that defines a name, not the package top: {offenders}"


def violations(edges: dict[str, set[str]]) -> list[str]:
    against = []
    for module, targets in edges.items():
        if not module:
            continue
        for target in targets:
            if not target or unit(target) == unit(module):
                continue
            if layer(target) >= layer(module):
                against.append(f"{module} -> {target}")
            allowed = ONLY.get(unit(module))
            if allowed is not None and unit(target) not in allowed:
                against.append(f"{module} -> {target} (only {sorted(allowed)})")
            if module in NO_SETTINGS and unit(target) == "settings":
                against.append(f"{module} -> {target} (backends take explicit arguments)")
    return sorted(against)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in list(edges):
        if module not in index:
            visit(module)
    return found


def test_imports_point_down_the_layers() -> None:
    against = violations(imports())
    assert not against, "imports against the layers:\n" + "\n".join(against)


def test_no_import_cycles() -> None:
    assert not cycles(imports())


def test_the_rules_catch_what_they_forbid() -> None:
    assert violations({"backends.postgres": {"branching.sources"}}) == [
        "backends.postgres -> branching.sources"
    ]
    assert violations({"emulator.proxy": {"names"}}) == [
        "emulator.proxy -> names (only ['_version', 'conninfo', 'errors', 'server'])"
    ]
    assert violations({"backends.lakebase": {"settings"}}) == [
        "backends.lakebase -> settings (backends take explicit arguments)"
    ]
    assert cycles({"branching.branch": {"branching.manager"}, "branching.manager": {"branching.branch"}}) == [
        ["branching.branch", "branching.manager"]
    ]


MODULES = {"", "names", "schema", "backends", "backends.base", "branching.manager", "branching.pool"}


@pytest.mark.parametrize(
    ("module", "is_package", "source", "expected"),
    [
        ("branching.manager", False, "from ..backends import open_backend", {"backends"}),
        ("branching.manager", False, "from .pool import WarmPool", {"branching.pool"}),
        ("branching.manager", False, "from .. import names", {"names"}),
        ("backends", True, "from .base import Tag", {"backends.base"}),
        ("backends", True, "from ..schema import read_schema", {"schema"}),
        ("cli", False, "from . import names", {"names"}),
        ("cli", False, "from . import __version__", {""}),
        ("cli", False, "from pytest_dbbranch.backends import base", {"backends.base"}),
        ("cli", False, "import pytest_dbbranch", {""}),
        ("cli", False, "import os", set()),
    ],
)
def test_imports_are_resolved(module: str, is_package: bool, source: str, expected: set[str]) -> None:
    """The walker itself: a bug here would make the layer tests pass vacuously."""
    node = ast.parse(source).body[0]
    assert targets_of(module, is_package, node, MODULES) == expected


def test_the_walker_sees_lazy_and_type_checking_imports() -> None:
    edges = imports()
    assert "backends.lakebase" in edges["backends"]  # inside open_backend
    assert "server.embedded" in edges["backends"]  # under TYPE_CHECKING
