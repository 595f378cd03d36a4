"""Every shipped recipe validates and runs on a slice of the demo data (one shared cache, so
the embedding pass of the pool is computed once for all recipes that use it)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import RECIPES, cli

RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_runs_on_a_slice(recipe, shared_cache, tmp_path):
    out = tmp_path / "out"
    result = cli("run", "-q", recipe, "--limit", "300", "--out", out, env={"SELECTKIT_CACHE_DIR": str(shared_cache)})
    assert result.returncode == 0, result.stdout + result.stderr
    table = pl.read_parquet(out / "selection.parquet")
    assert table.height == 300
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["pool"]["rows"] == 300
    selected = table.filter(pl.col("selected"))
    assert 0 < selected.height < 300
    assert sorted(selected["rank"].to_list()) == list(range(1, selected.height + 1))
