"""`selectkit validate` on real files: every broken recipe fails cleanly at the right line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RECIPES, ROOT, cli

BROKEN = sorted((Path(__file__).parent / "broken_recipes").glob("*.yaml"))


def expectation(path: Path) -> tuple[int, str]:
    match = re.match(r"# expect: (\d+): (.*)", path.read_text().splitlines()[0])
    assert match, f"{path.name} lacks an '# expect: LINE: message' header"
    return int(match.group(1)), match.group(2).strip()


def test_corpus_is_large_enough():
    assert len(BROKEN) >= 15


@pytest.mark.parametrize("recipe", BROKEN, ids=lambda p: p.stem)
def test_broken_recipe_fails_at_its_line(recipe: Path):
    line, message = expectation(recipe)
    result = cli("validate", recipe)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert f"{recipe}:{line}:" in result.stderr, output
    assert message in result.stderr, output


def test_shipped_recipes_are_valid():
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert recipes
    result = cli("validate", *recipes)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok") == len(recipes)


def test_json_and_github_formats():
    bad = BROKEN[0]
    good = RECIPES / "quickstart.yaml"
    result = cli("validate", "--format", "json", good, bad)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["format_version"] == 1 and report["valid"] is False
    assert [r["valid"] for r in report["recipes"]] == [True, False]
    assert expectation(bad)[0] in [e["line"] for e in report["recipes"][1]["errors"]]
    result = cli("validate", "--format", "github", bad)
    assert result.returncode == 1
    assert f"::error file={bad},line={expectation(bad)[0]},col=" in result.stdout


def test_usage_error_exits_2():
    result = cli("validate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_missing_recipe_file_is_a_clean_error(tmp_path):
    result = cli("validate", tmp_path / "nope.yaml")
    assert result.returncode == 1
    assert "recipe not found" in result.stderr and "Traceback" not in result.stderr


def test_validate_never_imports_torch():
    recipes = [str(p) for p in sorted(RECIPES.glob("*.yaml"))]
    code = ("import sys; from selectkit.cli import main; sys.argv=['selectkit','validate',*" + repr(recipes) + "]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in ('torch','transformers','ot','sklearn','sentence_transformers','datasets')"
            " if m in sys.modules)\nprint('HEAVY', heavy, code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY [] 0" in out.stdout, out.stdout + out.stderr
