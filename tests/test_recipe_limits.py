"""Recipes are bounded: alias bombs, recursive aliases, deep nesting and huge files are located
errors that come fast and in little memory; ordinary anchors and aliases keep working."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli

from selectkit.errors import RecipeError, RecipeErrors
from selectkit.recipe.spec import load
from selectkit.recipe.yamlsource import MAX_ALIASES, MAX_DEPTH, MAX_RECIPE_BYTES

HEADER = "selectkit: 1\nname: bounded\n"


# runs the CLI, then prints the process's peak resident memory (VmHWM counts only this program:
# getrusage's ru_maxrss would include the forking pytest process, torch and all)
_MEASURED = ("import atexit, re, sys\n"
             "atexit.register(lambda: print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', "
             "open('/proc/self/status').read()).group(1), file=sys.stderr))\n"
             "from selectkit.cli.commands import main\n"
             "sys.argv[0] = 'selectkit'\n"
             "main()\n")


def measured_cli(*args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `selectkit ARGS` in a subprocess; return the result, its wall seconds and its peak RSS in MiB."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURED, *map(str, args)], capture_output=True, text=True,
                            timeout=60)  # an unbounded alias bomb would run for hours
    seconds = time.perf_counter() - start
    match = re.search(r"^VmHWM (\d+)$", result.stderr, re.M)
    assert match, result.stderr
    return result, seconds, int(match.group(1)) / 1024


def billion_laughs(path: Path, levels: int = 9) -> int:
    """The classic alias bomb: 9 levels of 9 aliases expand to 9**9 scalars. Returns the line where
    the aliases' expansion crosses 10,000 nodes: l4's first *l3 (7,381 nodes, after 8,289 before it)."""
    lines = [*HEADER.splitlines(), 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    path.write_text("\n".join(lines) + "\n")
    return 3 + 4


def test_billion_laughs_is_an_error_at_the_alias_line_fast_and_small(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    line = billion_laughs(recipe)
    result, seconds, peak_mib = measured_cli("validate", recipe)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{recipe}:{line}:" in result.stderr and "expands the recipe past" in result.stderr
    assert "Traceback" not in result.stderr
    # the whole command, interpreter start included (about 0.5 s idle), generous for a loaded
    # 2-core machine; a plain `validate` of a small recipe peaks at about 50 MiB
    assert seconds < 30, seconds
    assert peak_mib < 200, peak_mib
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        load(recipe)
    assert time.perf_counter() - start < 2.0  # the bound itself: milliseconds
    assert info.value.location.line == line and info.value.code == "yaml-limit"


def test_recursive_alias_is_an_error_not_a_recursion_crash(tmp_path):
    recipe = tmp_path / "loop.yaml"
    recipe.write_text(HEADER + "data: &loop {pool: *loop}\n")
    result = cli("validate", recipe)
    assert result.returncode == 1
    assert f"{recipe}:3:" in result.stderr and "used inside the node it names" in result.stderr
    assert "Traceback" not in result.stderr


def test_deep_nesting_is_an_error_not_a_recursion_crash(tmp_path):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text(HEADER + "data: " + "[" * 5000 + "]" * 5000 + "\n")
    result = cli("validate", recipe)
    assert result.returncode == 1
    assert f"{recipe}:3:" in result.stderr and f"nests deeper than {MAX_DEPTH} levels" in result.stderr
    assert "Traceback" not in result.stderr


def test_too_many_alias_uses(tmp_path):
    recipe = tmp_path / "many.yaml"
    recipe.write_text(HEADER + "x: &x 1\nys: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n")
    with pytest.raises(RecipeError, match=f"more than {MAX_ALIASES} alias uses") as info:
        load(recipe)
    assert info.value.location.line == 4


def test_oversized_recipe_is_rejected_before_parsing(tmp_path):
    recipe = tmp_path / "huge.yaml"
    row = "  - {use: topk, with: {score: s, budget: 5}}\n"
    recipe.write_text(HEADER + "select:\n" + row * (10 * 2**20 // len(row)))  # 10 MiB of valid YAML
    assert recipe.stat().st_size > MAX_RECIPE_BYTES
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        load(recipe)
    assert time.perf_counter() - start < 2.0  # parsing 10 MiB with PyYAML would take far longer
    assert info.value.code == "recipe-file"
    result = cli("validate", recipe)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{recipe}:1:1: error: the recipe file is 10.0 MiB, over the 2 MiB limit" in result.stderr


def test_recipe_that_is_not_utf8_or_has_control_characters(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(HEADER.encode() + "description: café\n".encode("latin-1"))
    result = cli("validate", latin)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{latin}:3:17: error: the recipe is not UTF-8 text" in result.stderr
    nul = tmp_path / "nul.yaml"
    nul.write_text(HEADER + "description: a\x00b\n")
    result = cli("validate", nul)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{nul}:3:15: error: YAML error: character U+0000 is not allowed" in result.stderr


def test_ordinary_anchors_aliases_and_merge_keys_still_work(demo):
    text = (demo / "quickstart.yaml").read_text()
    text = text.replace("politics: {path: data/target_politics.jsonl}",
                        "politics: &source {path: data/target_politics.jsonl}\n    again: *source")
    text = text.replace("with: {score: dsir, budget: 10%}", "with: {<<: &pick {score: dsir}, budget: 10%}")
    assert "&source" in text and "<<: &pick" in text
    recipe = demo / "aliases.yaml"  # beside the demo data, so relative paths resolve
    recipe.write_text(text)
    result = cli("validate", recipe)
    assert result.returncode == 0, result.stderr
    loaded = load(recipe)
    assert loaded.recipe.data.targets["again"].path == "data/target_politics.jsonl"
    assert loaded.recipe.select[1].with_ == {"score": "dsir", "budget": "10%"}


def test_an_error_in_an_aliased_value_points_at_the_alias_use(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(HEADER + "description: &word not-a-number\nseed: *word\n")
    with pytest.raises(RecipeErrors) as info:
        load(recipe)
    errors = [str(e) for e in info.value.errors]
    assert any(e.startswith(f"{recipe}:4:7: seed:") for e in errors), errors  # line 3 holds the anchor
