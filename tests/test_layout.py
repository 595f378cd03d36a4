"""The layout's promises, read from the code (AST only): no import circle among selectkit's modules
(every import: module level, TYPE_CHECKING and inside functions), the contract imports nothing
above itself, the built-in plugins import the core only through `selectkit.plugin`, and the door's
own example runs verbatim."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
from conftest import ROOT

from selectkit.contract.registry import Registry
from selectkit.testing import check_scorer

CORE = ROOT / "selectkit"
PLUGINS = ROOT / "selectkit_plugins"


def module_name(path: Path, root: Path, package: str) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join([package, *(parts[:-1] if is_package else parts)]), is_package


def imported(path: Path, name: str, is_package: bool) -> set[str]:
    """Every module name `path` imports anywhere in it (relative imports resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(p, CORE, "selectkit")[0]: p for p in CORE.rglob("*.py")}

    def owner(target: str) -> str | None:
        parts = target.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        ties = {owner(t) for t in imported(path, name, is_package) if t.startswith("selectkit")}
        graph[name] = {t for t in ties if t and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_circle_among_selectkits_modules():
    graph = core_graph()
    assert len(graph) > 50
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join(trail[trail.index(nxt):] + [nxt])}"
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_contract_imports_nothing_above_itself():
    for path in (CORE / "contract").rglob("*.py"):
        name, is_package = module_name(path, CORE, "selectkit")
        for target in imported(path, name, is_package):
            if target.startswith("selectkit"):
                assert target.startswith(("selectkit.contract", "selectkit.errors")), f"{name} imports {target}"


def test_builtin_plugins_import_the_core_only_through_the_door():
    files = sorted(PLUGINS.rglob("*.py"))
    assert len(files) > 60
    for path in files:
        name, is_package = module_name(path, PLUGINS, "selectkit_plugins")
        for target in imported(path, name, is_package):
            if target == "selectkit" or target.startswith("selectkit."):
                assert target == "selectkit.plugin" or target.startswith("selectkit.plugin."), \
                    f"{path.relative_to(ROOT)} imports {target}"


def test_a_plugin_of_one_kind_imports_no_other_kinds_module():
    kinds = ("scorers", "normalizers", "selectors", "passes")
    for kind in kinds:
        for path in (PLUGINS / kind).glob("*.py"):
            name, is_package = module_name(path, PLUGINS, "selectkit_plugins")
            for target in imported(path, name, is_package):
                other = next((k for k in kinds if target.startswith(f"selectkit_plugins.{k}")), kind)
                assert other == kind, f"{path.relative_to(ROOT)} ({kind}) imports {target}"


def test_the_doors_example_runs_verbatim():
    import selectkit.plugin

    example = re.search(r"\n\n((?:    .*\n|\n)+)", selectkit.plugin.__doc__).group(1)
    module = types.ModuleType("door_example")
    exec(compile(textwrap.dedent(example), "selectkit/plugin.py", "exec"), module.__dict__)
    registry = Registry()
    registry.add(module, "example")
    vowels = registry.get("scorers", "vowels")
    score = check_scorer(vowels, {})
    assert score.values.shape == (60,) and ((0 <= score.values) & (score.values <= 1)).all()
    assert np.ptp(score.values) > 0


def test_few_modules_sit_directly_in_the_package():
    flat = [p for p in CORE.iterdir() if (p.suffix == ".py" and p.name != "__init__.py") or
            (p.is_dir() and (p / "__init__.py").exists())]
    assert len(flat) <= 16, sorted(p.name for p in flat)
