"""`selectkit explain` on real runs: the facts it prints (dropping stage, rule, cut-off, rank,
percentiles) checked against selection.parquet with polars, future columns, and its error paths."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import cli
from finished_runs import copy_run, demo_runs


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return demo_runs(tmp_path_factory)


def explain_json(run, *ids):
    result = cli("explain", run, *ids, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pool_percentile(values: pl.Series, value: float) -> float:
    v = values.drop_nulls().drop_nans().to_numpy()
    return round(100 * ((v < value).sum() + 0.5 * (v == value).sum()) / len(v), 2)


def test_explain_names_the_stage_that_dropped_each_example(runs):
    run = runs["perplexity"]
    table = pl.read_parquet(run / "selection.parquet")
    by_threshold = table.filter(pl.col("dropped_by") == "threshold")["id"][0]
    by_topk = table.filter(pl.col("dropped_by") == "topk")["id"][0]
    kept = table.filter(pl.col("rank") == 3)["id"][0]
    records = {r["id"]: r for r in explain_json(run, by_threshold, by_topk, kept)}

    ppl_bound = table.filter(pl.col("dropped_by").is_null() | (pl.col("dropped_by") != "threshold"))["score.ppl"].max()
    first = records[by_threshold]
    assert first["selected"] is False and first["rank"] is None and first["dropped_by"] == "threshold"
    threshold, topk = first["stages"]
    assert threshold["outcome"] == "dropped" and topk["outcome"] == "not reached"
    assert threshold["params"] == {"score": "ppl", "max_quantile": 0.9}
    dropped_min = table.filter(pl.col("dropped_by") == "threshold")["score.ppl"].min()
    # the recorded rule (the 0.9 quantile) lies between the last kept value and the first dropped one
    assert ppl_bound <= threshold["cutoff"]["high"] < dropped_min and threshold["cutoff"]["low"] is None
    row = table.filter(pl.col("id") == by_threshold)
    assert threshold["score"]["value"] == pytest.approx(row["score.ppl"][0]) and row["score.ppl"][0] > ppl_bound
    assert (threshold["candidates"], threshold["kept"]) == (300, 270)

    second = records[by_topk]
    assert second["dropped_by"] == "topk" and [s["outcome"] for s in second["stages"]] == ["kept", "dropped"]
    mink_bound = table.filter(pl.col("selected"))["score.mink"].min()
    assert second["stages"][1]["cutoff"]["low"] == pytest.approx(mink_bound)

    third = records[kept]
    assert third["selected"] is True and third["rank"] == 3 and third["of"] == table["selected"].sum()
    assert third["dropped_by"] is None and [s["outcome"] for s in third["stages"]] == ["kept", "kept"]
    for score in third["scores"]:
        value = table.filter(pl.col("id") == kept)[score["column"]][0]
        assert score["value"] == pytest.approx(value)
        assert score["pool_percentile"] == pytest.approx(pool_percentile(table[score["column"]], value), abs=0.01)
    assert third["domain"] == kept.split("-")[0] and third["text"]


def test_explain_text_output(runs):
    run = runs["perplexity"]
    table = pl.read_parquet(run / "selection.parquet")
    dropped = table.filter(pl.col("dropped_by") == "threshold")["id"][0]
    result = cli("explain", run, dropped)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{dropped}: not selected, dropped by threshold")
    assert "stage threshold (threshold: max_quantile=0.9, score=ppl): dropped; kept 270 of 300; rule score.ppl <=" \
        in result.stdout
    assert "stage topk (topk: budget=20%, score=mink): not reached" in result.stdout
    assert "score.mink" in result.stdout and "pool pct" in result.stdout


def test_explain_a_sampled_stage_gives_the_candidate_percentile(runs):
    """importance_resample samples: no single cut-off, so explain gives where the example stood instead."""
    run = runs["quickstart"]
    table = pl.read_parquet(run / "selection.parquet")
    dropped = table.filter(pl.col("dropped_by") == "importance_resample").sort("score.dsir")["id"][-1]
    record = explain_json(run, dropped)[0]
    stage = record["stages"][1]
    assert stage["outcome"] == "dropped" and "cutoff" not in stage
    assert stage["score"]["candidate_percentile"] == pytest.approx(
        pool_percentile(table["score.dsir"], stage["score"]["value"]), abs=0.01)


def test_explain_uses_raw_and_provenance_columns_when_written(runs, tmp_path):
    """raw.<score> (before normalizers), duplicate_of (dedup) and served_task (balanced), once outputs write them."""
    copy = copy_run(runs["perplexity"], tmp_path / "run")
    table = pl.read_parquet(copy / "selection.parquet")
    table = table.with_columns((pl.col("score.mink") * 10).alias("raw.mink"),
                               pl.when(pl.col("dropped_by") == "topk").then(pl.lit("politics-0001"))
                               .alias("duplicate_of"),
                               pl.when(pl.col("selected")).then(pl.lit("politics")).alias("served_task"))
    table.write_parquet(copy / "selection.parquet")
    dropped = table.filter(pl.col("dropped_by") == "topk")["id"][0]
    chosen = table.filter(pl.col("selected"))["id"][0]
    records = {r["id"]: r for r in explain_json(copy, dropped, chosen)}
    mink = next(s for s in records[dropped]["scores"] if s["column"] == "score.mink")
    assert mink["raw"] == pytest.approx(10 * mink["value"])
    assert mink["raw_pool_percentile"] == pytest.approx(mink["pool_percentile"], abs=0.01)
    assert records[dropped]["duplicate_of"] == "politics-0001"
    assert records[chosen]["served_task"] == "politics"
    text = cli("explain", copy, dropped).stdout
    assert "duplicate of: politics-0001" in text and "raw " in text


def test_explain_works_without_the_pool_file(runs, tmp_path):
    def gone(manifest):
        manifest["data"]["pool"]["path"] = "/nonexistent/pool.jsonl"
        manifest["recipe"]["file"] = "/nonexistent/recipe.yaml"

    copy = copy_run(runs["quickstart"], tmp_path / "run", gone)
    record = explain_json(copy, "politics-0149")[0]
    assert "text" not in record and any("not found" in n for n in record["notes"])
    assert np.isfinite(record["scores"][0]["value"])


@pytest.mark.parametrize("case", ["unknown", "several", "missing-run"])
def test_explain_errors(runs, tmp_path, case):
    run = runs["quickstart"]
    args = {"unknown": [run, "politics-0149x"], "several": [run, "nope-1", "politics-0149", "nope-2"],
            "missing-run": [tmp_path / "none", "x"]}[case]
    result = cli("explain", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    expected = {"unknown": "error: id 'politics-0149x' is not in the run's pool",
                "several": "error: ids not in the run's pool",
                "missing-run": "error: run folder not found"}[case]
    assert result.stderr.startswith(expected), result.stderr
    if case == "unknown":
        assert "did you mean 'politics-0149'?" in result.stderr
    if case == "several":
        assert "'nope-1', 'nope-2'" in result.stderr


def test_explain_needs_an_id():
    result = cli("explain", "somewhere")
    assert result.returncode == 2 and "Missing argument" in result.stderr
