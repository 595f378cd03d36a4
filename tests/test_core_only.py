"""The light CI job the README promises: with only the core installed (no torch, no model
packages), `selectkit validate` accepts every shipped recipe, with a warning for what it could not
check and which extra checks it; `--strict` turns those warnings into errors. Builds its own
core-only virtual environment (marked `isolated`: `.ci/run` runs it)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from conftest import RECIPES, ROOT

pytestmark = pytest.mark.isolated
CORE = ("pydantic", "pyyaml", "pluggy", "polars", "numpy", "click")


@pytest.fixture(scope="module")
def core_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CORE]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True, timeout=600)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)],
                   check=True, timeout=600)
    missing = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert missing == "None"  # really core-only
    return python


def test_every_shipped_recipe_validates_with_warnings(core_python):
    recipes = sorted(RECIPES.glob("*.yaml"))
    result = subprocess.run([str(core_python), "-m", "selectkit", "validate", *map(str, recipes)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count(": ok") == len(recipes)
    assert "the `models` extra installs it" in result.stderr or "'models' extra" in result.stderr


def test_strict_makes_the_warnings_errors(core_python):
    recipe = RECIPES / "target_similarity.yaml"  # uses the MiniLM wheel, absent here
    result = subprocess.run([str(core_python), "-m", "selectkit", "validate", "--strict", str(recipe)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
