"""Plugins load through entry points one by one; broken ones are reported, clashes name both sides."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, cli

from selectkit.contract import hookspecs
from selectkit.contract.registry import KINDS, Registry, load_registry
from selectkit.errors import PluginError


def fake_distribution(root: Path, dist: str, module: str, source: str) -> Path:
    """Install a minimal distribution (dist-info + module) into `root`, for PYTHONPATH."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[selectkit]\n{module} = {module}\n")
    return root


def test_broken_plugin_is_skipped_with_a_warning_and_fails_under_strict(tmp_path):
    site = fake_distribution(tmp_path / "site", "brokenplugin", "broken_plugin", "raise RuntimeError('boom')\n")
    env = {"PYTHONPATH": str(site)}
    result = cli("plugins", env=env)
    assert result.returncode == 0
    assert "broken_plugin (brokenplugin) failed to load" in result.stderr and "boom" in result.stderr
    assert "topk" in result.stdout  # the rest still works
    strict = cli("plugins", "--strict", env=env)
    assert strict.returncode == 2
    assert "broken_plugin" in strict.stderr and "Traceback" not in strict.stderr


def test_name_clash_names_both_distributions(tmp_path):
    site = fake_distribution(tmp_path / "site", "clashplugin", "clash_plugin", """
        from selectkit.plugin import Scorer, hookimpl

        class Impostor(Scorer):
            name = "length"

        @hookimpl
        def register_scorers(register):
            register(Impostor)
    """)
    result = cli("plugins", env={"PYTHONPATH": str(site)})
    assert result.returncode == 2
    assert "'length' is registered twice" in result.stderr
    assert "selectkit" in result.stderr and "clashplugin" in result.stderr
    assert "Traceback" not in result.stderr


def test_third_party_component_is_usable_in_a_recipe(tmp_path):
    site = fake_distribution(tmp_path / "site", "vowelplugin", "vowel_plugin", """
        import numpy as np
        from selectkit.plugin import Score, Scorer, hookimpl

        class Vowels(Scorer):
            '''Share of vowels in the text.'''
            name = "vowels"

            def run(self, ctx):
                return Score(np.array([sum(c in "aeiou" for c in t) / max(len(t), 1) for t in ctx.pool.texts]))

        @hookimpl
        def register_scorers(register):
            register(Vowels)
    """)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
selectkit: 1
name: vowels
data: {{pool: {{path: {ROOT / 'recipes/data/pool.jsonl'}, id: id}}}}
scores: {{v: {{use: vowels}}}}
select: [{{use: topk, with: {{score: v, budget: 5}}}}]
""")
    env = {"PYTHONPATH": str(site)}
    assert cli("validate", recipe, env=env).returncode == 0
    result = cli("run", recipe, "--out", tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    assert "selected 5 of 1306" in result.stdout
    assert "vowels" in cli("plugins", env=env).stdout


def test_every_hook_is_documented_and_implemented_by_a_builtin():
    registry = load_registry(strict=True)
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]
    assert sorted(specs) == sorted(f"register_{k}" for k in KINDS)
    readme = (ROOT / "README.md").read_text()
    for name in specs:
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"
        assert name in readme, f"{name} is not documented in README.md"
        assert registry.components[name.removeprefix("register_")], f"no built-in implements {name}"


def test_unknown_component_suggests_a_name():
    registry = load_registry()
    with pytest.raises(PluginError, match="did you mean 'topk'"):
        registry.get("selectors", "topkk")


def test_same_plugin_twice_is_an_error():
    registry = Registry()
    from selectkit_plugins.selectors import topk

    registry.add(topk, "topk")
    with pytest.raises(PluginError):
        registry.add(topk, "topk")


def test_plugin_modules_do_not_import_heavy_libraries():
    """Importing a built-in plugin must stay cheap: torch & co. are imported inside `run`."""
    heavy = {"torch", "transformers", "ot", "sklearn", "sentence_transformers", "faiss", "datasets", "peft"}
    files = sorted((ROOT / "selectkit_plugins").rglob("*.py"))
    assert len(files) > 40, "the built-in plugins were not found"
    for path in files:
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in heavy, f"{path.relative_to(ROOT)} imports {name} at module level"


def test_readme_component_table_is_current():
    """The README's component table is generated from the registry: a new or renamed component,
    or a changed summary, fails here until `python -m selectkit.cli.catalog --write README.md` runs."""
    from selectkit.cli.catalog import block

    readme = (ROOT / "README.md").read_text()
    assert block(load_registry(strict=True)) in readme, "run: python -m selectkit.cli.catalog --write README.md"
