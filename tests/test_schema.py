"""The committed JSON Schema matches the installed components, and it really validates recipes."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import RECIPES, ROOT, cli


def test_committed_schema_is_current():
    result = cli("schema", "--check", cwd=ROOT)
    assert result.returncode == 0, result.stderr + " — run `selectkit schema` and commit schemas/"


def test_schema_check_detects_staleness(tmp_path):
    stale = tmp_path / "s.json"
    stale.write_text("{}")
    result = cli("schema", "--check", "--out", stale)
    assert result.returncode == 1 and "stale" in result.stderr


def test_schema_accepts_shipped_recipes_and_rejects_unknown_params():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    for path in RECIPES.glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    recipe = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    recipe["select"][1]["with"]["temprature"] = 2.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(recipe, schema)
