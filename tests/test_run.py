"""`selectkit run` end to end on the shipped demo data: outputs, cache reuse, determinism."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import cli


@pytest.fixture
def quickstart(demo, tmp_path):
    out = tmp_path / "out"
    result = cli("run", demo / "quickstart.yaml", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return demo, out, result


def test_quickstart_writes_selection_subset_and_manifest(quickstart):
    demo, out, result = quickstart
    table = pl.read_parquet(out / "selection.parquet")
    pool = pl.read_ndjson(demo / "data" / "pool.jsonl")
    assert table.height == pool.height
    assert table["id"].to_list() == pool["id"].to_list()
    for column in ("id", "selected", "weight", "count", "rank", "dropped_by", "score.dsir", "score.words"):
        assert column in table.columns
    selected = table.filter(pl.col("selected")).sort("rank")
    assert selected.height == int(0.10 * pool.height)
    assert selected["rank"].to_list() == list(range(1, selected.height + 1))
    assert table.filter(~pl.col("selected"))["rank"].null_count() == pool.height - selected.height
    # every dropped row names the stage that dropped it
    assert table.filter(~pl.col("selected"))["dropped_by"].null_count() == 0
    assert set(table["dropped_by"].drop_nulls()) <= {"threshold", "importance_resample"}
    # the subset keeps the original fields, best first
    subset = pl.read_ndjson(out / "subset.jsonl")
    assert subset.columns == pool.columns
    assert subset["id"].to_list() == selected["id"].to_list()
    assert pl.read_parquet(out / "subset.parquet").equals(subset)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "quickstart"
    assert manifest["recipe"]["resolved"]["seed"] == 0
    assert manifest["data"]["pool"]["rows"] == pool.height
    assert len(manifest["data"]["pool"]["fingerprint"]) == 64
    assert manifest["selection"]["selected"] == selected.height
    assert "selectkit" in manifest["plugin_versions"]
    assert {s["label"] for s in manifest["stages"] if s["kind"] == "score"} == {"dsir", "words"}


def test_quickstart_selects_the_target_domain(quickstart):
    demo, out, result = quickstart
    table = pl.read_parquet(out / "selection.parquet")
    pool = pl.read_ndjson(demo / "data" / "pool.jsonl")
    domains = pool.filter(table["selected"])["domain"]
    share = (domains == "politics").mean()
    assert share >= 0.8, domains.value_counts()
    assert "politics" in result.stdout and "selected 130 of 1306" in result.stdout


def test_second_run_computes_nothing(quickstart, tmp_path):
    demo, out, _ = quickstart
    first = (out / "selection.parquet").read_bytes()
    result = cli("run", demo / "quickstart.yaml", "--out", out)
    assert result.returncode == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    keyed = [s for s in stages if s["key"]]
    assert keyed and all(s["status"] == "cached" for s in keyed), keyed
    assert (out / "selection.parquet").read_bytes() == first


def test_changing_only_the_selector_recomputes_only_selection(quickstart):
    demo, out, _ = quickstart
    recipe = demo / "quickstart.yaml"
    recipe.write_text(recipe.read_text().replace("budget: 10%", "budget: 5%"))
    result = cli("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    stages = {s["label"]: s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["key"]}
    assert stages["dsir"]["status"] == "cached" and stages["words"]["status"] == "cached"
    assert stages["threshold"]["status"] == "cached"
    assert stages["importance_resample"]["status"] == "computed"
    assert pl.read_parquet(out / "selection.parquet")["selected"].sum() == int(0.05 * 1306)


def test_runs_are_byte_identical(demo, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        env = {"SELECTKIT_CACHE_DIR": str(tmp_path / f"c{i}")}
        result = cli("run", demo / "quickstart.yaml", "--out", out, env=env)
        assert result.returncode == 0, result.stderr
        outs.append(out)
    for name in ("selection.parquet", "subset.parquet", "subset.jsonl"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_seed_changes_the_sample(demo, tmp_path):
    recipe = demo / "quickstart.yaml"
    a = tmp_path / "a"
    assert cli("run", recipe, "--out", a).returncode == 0
    recipe.write_text(recipe.read_text().replace("seed: 0", "seed: 1"))
    b = tmp_path / "b"
    assert cli("run", recipe, "--out", b).returncode == 0
    sa = pl.read_parquet(a / "selection.parquet")["selected"].to_numpy()
    sb = pl.read_parquet(b / "selection.parquet")["selected"].to_numpy()
    assert sa.sum() == sb.sum() and not np.array_equal(sa, sb)


def test_plan_shows_defaults_and_cache_hits(quickstart):
    demo, out, _ = quickstart
    result = cli("plan", demo / "quickstart.yaml")
    assert result.returncode == 0, result.stderr
    assert "[score] dsir  (cached)" in result.stdout
    assert "[select] importance_resample  (cached)" in result.stdout
    assert "temperature" in result.stdout  # a resolved default the recipe does not spell out
    dry = cli("run", demo / "quickstart.yaml", "--dry-run")
    assert dry.returncode == 0 and dry.stdout == result.stdout


def test_bad_data_is_a_clean_error(demo, tmp_path):
    (demo / "data" / "pool.jsonl").write_text('{"id": "a", "body": "no text column here"}\n')
    result = cli("run", demo / "quickstart.yaml", "--out", tmp_path / "o")
    assert result.returncode == 1
    assert "column 'text' not found" in result.stderr and "Traceback" not in result.stderr


def test_duplicate_ids_are_a_clean_error(demo, tmp_path):
    (demo / "data" / "pool.jsonl").write_text('{"id": "a", "text": "x y z w v"}\n{"id": "a", "text": "p q r s t"}\n')
    result = cli("run", demo / "quickstart.yaml", "--out", tmp_path / "o")
    assert result.returncode == 1
    assert "duplicate value 'a'" in result.stderr and "Traceback" not in result.stderr


def test_selection_written_in_parts_equals_one_table(demo, tmp_path, monkeypatch):
    """A large pool's selection.parquet is built a slice of rows at a time (bounded memory): the
    file is the same table as one built whole, include_text and summarize_by columns included."""
    import selectkit
    import selectkit.execution.outputs as outputs

    recipe = demo / "quickstart.yaml"
    assert "summarize_by: domain" in recipe.read_text()
    recipe.write_text(recipe.read_text().replace("output:", "output:\n  include_text: true", 1))
    cache = tmp_path / "cache"
    selectkit.run(recipe, cache_dir=cache, out_dir=tmp_path / "whole")
    monkeypatch.setattr(outputs, "_SELECTION_ROWS", 37)
    selectkit.run(recipe, cache_dir=cache, out_dir=tmp_path / "parts")
    whole = pl.read_parquet(tmp_path / "whole" / "selection.parquet")
    parts = pl.read_parquet(tmp_path / "parts" / "selection.parquet")
    assert whole.height > 5 * 37 and {"text", "domain"} <= set(whole.columns)
    assert parts.equals(whole)
    assert not (tmp_path / "parts" / ".parts").exists()
