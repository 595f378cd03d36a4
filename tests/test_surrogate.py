"""Score surrogates: the keyed, cluster-stratified label sample, the predictors and their held-out
agreement, the recipe checks, the plan (the oracle's passes cover the sample only) and a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import RECIPES, cli

from selectkit.contract.keyed_random import row_keys
from selectkit.errors import RecipeErrors
from selectkit.execution.surrogate import agreement_warnings, fit_predict, label_sample, precision_at, spearman

pytest.importorskip("sklearn")


def _blobs(n: int, d: int = 8, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4
    which = rng.integers(k, size=n)
    return centres[which] + rng.normal(size=(n, d)), which


def test_label_sample_is_keyed_by_row_id_not_position():
    x, _ = _blobs(500)
    ids = pl.Series("id", [f"row-{i}" for i in range(500)])
    keys = row_keys(ids)
    usable = np.ones(500, dtype=bool)
    a = label_sample(keys, x, usable, 50, 0.2, seed=3, name="s")
    perm = np.random.default_rng(1).permutation(500)
    b = label_sample(keys[perm], x[perm], usable, 50, 0.2, seed=3, name="s")
    assert ids.gather(a.rows).to_list() == ids.gather(perm[b.rows]).to_list()  # same rows, same order
    held_a = set(ids.gather(a.rows[a.holdout]))
    assert held_a == set(ids.gather(perm[b.rows[b.holdout]]))
    assert len(a.rows) == 50 and a.holdout.sum() == 10
    c = label_sample(keys, x, usable, 50, 0.2, seed=4, name="s")  # another seed, another sample
    assert set(a.rows) != set(c.rows)


def test_label_sample_is_stratified_over_clusters():
    x, which = _blobs(1000, k=4, seed=2)
    keys = row_keys(pl.Series(np.arange(1000)))
    s = label_sample(keys, x, np.ones(1000, bool), 100, 0.2, seed=0, name="s", clusters=4)
    expected = np.bincount(which, minlength=4) / 10
    got = np.bincount(which[s.rows], minlength=4)
    assert np.abs(got - expected).max() <= 1.01  # proportional allocation, up to rounding
    held = np.bincount(which[s.rows[s.holdout]], minlength=4)
    assert np.abs(held - expected * 0.2).max() <= 1.01
    unusable = np.ones(1000, bool)
    unusable[:500] = False
    assert (label_sample(keys, x, unusable, 100, 0.2, 0, "s").rows >= 500).all()


@pytest.mark.parametrize("model", ["ridge", "knn", "mlp"])
def test_predictors_track_a_learnable_oracle(model):
    rng = np.random.default_rng(0)
    n, d = (1500, 16) if model != "mlp" else (500, 4)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n) if model != "knn" else np.sin(x[:, 0]) * 3 + x[:, 1]
    keys = row_keys(pl.Series(np.arange(n)))
    labels = n * 4 // 15
    s = label_sample(keys, x, np.ones(n, bool), labels, 0.25, seed=0, name="t", stratify="none")
    fit = fit_predict(x, y[s.rows], s, keys, model, folds=3, seed=0, name="t", budget_share=0.1)
    a = fit.report["agreement"]["value"]
    assert a["spearman"] > 0.8 and a["precision_at_budget"] >= 0.5, a
    assert fit.oracle.sum() == labels and np.allclose(fit.values[s.rows], y[s.rows])  # oracle values kept as they are
    unlabelled = np.setdiff1d(np.arange(n), s.rows)
    assert spearman(y[unlabelled], fit.values[unlabelled]) > 0.8
    assert not agreement_warnings("t", fit.report, 0.3)


def test_random_features_report_spearman_near_zero_and_a_warning():
    rng = np.random.default_rng(5)
    n = 2000
    y = rng.normal(size=n)
    noise = rng.normal(size=(n, 32))  # features that know nothing about the oracle
    keys = row_keys(pl.Series(np.arange(n)))
    s = label_sample(keys, noise, np.ones(n, bool), 1000, 0.3, seed=0, name="r")
    fit = fit_predict(noise, y[s.rows], s, keys, "ridge", folds=5, seed=0, name="r", budget_share=0.1)
    a = fit.report["agreement"]["value"]
    assert abs(a["spearman"]) < 0.15, a
    warned = agreement_warnings("r", fit.report, 0.3)
    assert warned and "barely tracks its oracle" in warned[0]


def test_matrix_oracle_gets_one_output_per_column():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 6))
    y = np.stack([x[:, 0], -x[:, 1]], axis=1)
    keys = row_keys(pl.Series(np.arange(600)))
    s = label_sample(keys, x, np.ones(600, bool), 200, 0.2, 0, "m", stratify="none")
    fit = fit_predict(x, y[s.rows], s, keys, "ridge", 5, 0, "m", 0.1, columns=("a", "b"))
    assert fit.values.shape == (600, 2) and set(fit.report["agreement"]) == {"a", "b"}
    assert len(fit.report["settings"]["penalty"]) == 2
    assert min(v["spearman"] for v in fit.report["agreement"].values()) > 0.9


def test_precision_at_budget():
    truth = np.arange(10.0)
    assert precision_at(truth, truth, 3) == 1.0
    assert precision_at(truth, -truth, 3) == 0.0


# ---------------------------------------------------------------- recipes

RECIPE = """
selectkit: 1
name: sur
seed: 0
data:
  pool: {{path: {data}/pool.jsonl, id: id, limit: {limit}}}
models:
  lm: {{path: {models}/tiny-lm, kind: causal-lm, max_length: 32}}
scores:
  emb: {{use: embedding, model: lm}}
  cheap: {{use: length}}
  ppl:
    use: {oracle}
    {model_line}
    surrogate: {surrogate}
select:
  - use: topk
    with: {{score: ppl, budget: 10%}}
output: {{dir: {out}, report: false}}
"""


def _recipe(tmp_path: Path, surrogate: str = "{features: emb, labels: 25%}", oracle: str = "perplexity",
            limit: int = 120) -> Path:
    text = RECIPE.format(data=RECIPES / "data", models=RECIPES / "models", limit=limit, oracle=oracle,
                         model_line="model: lm" if oracle == "perplexity" else "", surrogate=surrogate,
                         out=tmp_path / "out")
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("surrogate", "oracle", "message"), [
    ("{features: emb}", "length", "runs no model pass"),
    ("{features: embs}", "perplexity", "unknown score or model 'embs'; did you mean 'emb'?"),
    ("{features: nothing}", "perplexity", "unknown score or model 'nothing'"),
    ("{features: cheap}", "perplexity", "must be a features score"),
    ("{features: emb, labels: 500}", "perplexity", "larger than the pool (120 rows)"),
    ("{features: emb, labels: 6}", "perplexity", "too few to fit and judge"),
    ("{features: emb, labels: 10tokens}", "perplexity", "cannot read budget"),
    ("{features: emb, model: forest}", "perplexity", "surrogate.model"),
])
def test_recipe_errors_are_located(tmp_path, surrogate, oracle, message):
    from selectkit.planning.check import validate

    with pytest.raises(RecipeErrors) as err:
        validate(_recipe(tmp_path, surrogate, oracle))
    text = str(err.value)
    assert message in text and "recipe.yaml:" in text, text


def test_validate_cli_exits_non_zero_without_a_traceback(tmp_path):
    done = cli("validate", _recipe(tmp_path, "{features: emb, labels: 500}"))
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert "larger than the pool" in done.stderr + done.stdout


def test_plan_runs_the_oracle_over_the_label_sample_only(tmp_path):
    from selectkit import api

    plan = api.plan(_recipe(tmp_path))
    kinds = [s.kind for s in plan.steps]
    assert kinds.count("sample") == 1 and kinds.count("oracle") == 1
    loss = next(s for s in plan.of_kind("pass") if "loss" in s.label)
    assert loss.payload.work.data == "labels:ppl" and "sample:ppl" in loss.inputs
    assert loss.estimate is None or "30 examples" in str(loss.estimate.as_detail())
    text = plan.render()
    assert "labels: 30 of 120 pool rows" in text and "[oracle] ppl" in text
    by_model = api.plan(_recipe(tmp_path, "{features: lm, labels: 30}"))  # a model: its pooled embeddings
    sample = by_model.step("sample:ppl")
    assert "score:lm.embedding" in sample.inputs and by_model.step("score:lm.embedding").kind == "score"


@pytest.mark.slow  # 18-50 s (torch, a model, two runs); the default suite runs recipes/mates.yaml end to end instead
def test_a_tiny_run_marks_oracle_values_and_reports_agreement(tmp_path):
    pytest.importorskip("torch")
    from selectkit import api

    output = api.run(_recipe(tmp_path, limit=80))
    table = pl.read_parquet(output.files["selection"])
    assert table["oracle.ppl"].sum() == 20 and table["score.ppl"].null_count() == 0
    manifest = json.loads(output.files["manifest"].read_text())
    report = manifest["surrogates"]["ppl"]
    assert report["labels"] == 20 and report["holdout"] == 4 and report["budget"]["stage"] == "topk"
    assert set(report["agreement"]["value"]) >= {"spearman", "pearson", "precision_at_budget"}
    passes = [s for s in manifest["stages"] if s["kind"] == "model-pass" and "labels:ppl" in s["label"]]
    assert len(passes) == 1
    again = api.run(_recipe(tmp_path, limit=80))  # everything from the cache, the same report
    assert json.loads(again.files["manifest"].read_text())["surrogates"] == manifest["surrogates"]


# ---------------------------------------------------------------- known answer (demo LESS)


@pytest.mark.slow  # the full LESS oracle over the demo pool: ~4 min idle, ~12 min on the shared 2-core machine
def test_mates_recipe_tracks_the_full_less_oracle(demo):
    """recipes/mates.yaml (ridge on MiniLM, 10% labels) against recipes/less.yaml (the full oracle),
    sharing the warmup and the target's gradients through the cache. Measured (seed 0): held-out
    Spearman 0.215 (95% -0.20 to 0.56, 26 rows), precision@budget 0.0 (k = 1: 5% of 26 rows),
    Spearman on the 1,176 unlabelled rows 0.035, overlap of the two top-5% selections 0.077 (5 of
    65; chance is 0.05). The demo's LESS score (a 2-layer tiny LM) is barely predictable from MiniLM
    embeddings (nor from the tiny LM's own: unlabelled Spearman 0.05), and the run says so with a
    warning. The floors sit under the measured figures; the warning is part of the known answer."""
    pytest.importorskip("torch")
    from selectkit import api

    full = api.run(demo / "less.yaml")
    sur = api.run(demo / "mates.yaml")
    manifest = json.loads(sur.files["manifest"].read_text())
    report = manifest["surrogates"]["influence"]
    a = report["agreement"]["value"]
    assert report["labels"] == 130 and report["holdout"] == 26
    truth = np.asarray(full.result.scores["influence"].values)
    values = np.asarray(sur.result.scores["influence"].values)
    oracle = sur.result.oracle["influence"]
    assert np.allclose(values[oracle], truth[oracle], atol=1e-5)  # the oracle's own values where it ran
    unlabelled = spearman(truth[~oracle], values[~oracle])
    top_full, top_sur = set(full.result.ranking.tolist()), set(sur.result.ranking.tolist())
    overlap = len(top_full & top_sur) / len(top_full)
    print(f"held-out {a}; unlabelled Spearman {unlabelled:.3f}; overlap {overlap:.3f}")
    assert a["spearman"] >= 0.1 and unlabelled >= 0.0
    assert a["precision_at_budget"] >= 0.0 and overlap >= 0.05
    assert any("barely tracks its oracle" in w for w in report["warnings"])
    # the same sample with random features: Spearman near 0 and a warning
    from selectkit.execution.surrogate import LabelSample

    keys = sur.result.pool.keys
    rows = np.flatnonzero(oracle)
    held = np.zeros(len(rows), bool)
    held[np.argsort(keys[rows])[: len(rows) // 2]] = True  # a larger held-out half, for a tighter estimate
    sample = LabelSample(rows, held, np.zeros(len(rows), np.int64), 1)
    noise = np.random.default_rng(0).normal(size=(len(truth), 384))
    fit = fit_predict(noise, truth[rows], sample, keys, "ridge", 5, 0, "influence", 0.05)
    r = fit.report["agreement"]["value"]
    assert abs(r["spearman"]) < 0.35 and agreement_warnings("influence", fit.report, 0.3), r
