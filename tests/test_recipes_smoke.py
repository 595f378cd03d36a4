"""Every shipped recipe validates and runs on a slice of the demo data (one shared cache, so
the embedding pass of the pool is computed once for all recipes that use it)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import RECIPES, cli

RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))
# recipes that train or sample per example run on a smaller slice (the suite's time budget)
LIMITS = {"learning_percentage": 80, "el2n_prune": 80, "grpo_hard": 100, "smart": 100}
# two LoRA trainings or a training with a forward pass per epoch: their mechanisms are tested in
# process by test_methods_training.py; the whole recipe runs with -m slow. less.yaml (a warmup and
# gradients, ~40 s): test_resume kills and resumes a LESS recipe in the default run, and
# tests/test_ray.py (in .ci/run) runs less.yaml to the end on both executors
SLOW = {"learning_percentage", "el2n_prune", "less"}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r.stem in SLOW else r
                                    for r in RECIPE_FILES], ids=lambda p: p.stem)
def test_recipe_runs_on_a_slice(recipe, shared_cache, tmp_path):
    out = tmp_path / "out"
    limit = LIMITS.get(recipe.stem, 300)
    result = cli("run", "-q", recipe, "--limit", str(limit), "--out", out,
                 env={"SELECTKIT_CACHE_DIR": str(shared_cache)})
    assert result.returncode == 0, result.stdout + result.stderr
    table = pl.read_parquet(out / "selection.parquet")
    assert table.height == limit
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["pool"]["rows"] == limit
    selected = table.filter(pl.col("selected"))
    assert 0 < selected.height < limit
    assert sorted(selected["rank"].to_list()) == list(range(1, selected.height + 1))
