"""influence.trak, the real TRAK estimator: sum_c w_c X_c (X_c^T X_c + lambda I)^-1 phi_c with X^T X
streamed over the gradient store. Known answers: a small recipe's columns equal a numpy product read
straight from the store's .npy files (one solve over the whole X); streamed in tiny blocks it equals one
block; with a large damping it ranks like TracIn; a negative damping is a located validate error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import ROOT, cli

from selectkit.evaluation.ranks import spearman
from selectkit.plugin import SelectkitError
from selectkit.storage.cache import Cache
from selectkit.storage.gradient_store import StoredFeatures, encode
from selectkit_plugins.lib.influence.scores import tracin, trak


def stored(tmp_path: Path, name: str, arrays: list[np.ndarray], dtype: str = "float32") -> StoredFeatures:
    shards = Cache(tmp_path).sharded("passes", name, len(arrays))
    for i, a in enumerate(arrays):
        shards.write(i, encode(a, dtype))
    return StoredFeatures(shards, list(range(len(arrays))), sum(len(a) for a in arrays), arrays[0].shape[1], dtype)


def reference(xs: list[np.ndarray], ys: list[np.ndarray], weights: list[float], damping: float) -> np.ndarray:
    """One dense solve per checkpoint over the whole X, lambda = damping * trace(X^T X) / k."""
    out = 0.0
    for x, y, w in zip(xs, ys, weights):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        g = x.T @ x
        out = out + w * (x @ np.linalg.solve(g + damping * np.trace(g) / len(g) * np.eye(len(g)), y.T))
    return out


# ---------------------------------------------------------------- the maths, streamed


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streamed_in_tiny_blocks_equals_one_block_and_a_dense_solve(tmp_path, dtype, monkeypatch):
    import selectkit.storage.gradient_store as store
    import selectkit_plugins.lib.influence.scores as scores

    monkeypatch.setattr(store, "block_rows", lambda dim: 7)  # 40 = 5*7 + 5: uneven blocks inside each shard
    monkeypatch.setattr(scores, "GRAM_COLUMNS", 5)  # X^T X in uneven column strips (24 = 4*5 + 4)
    rng = np.random.default_rng(3)
    parts = [[rng.normal(size=(n, 24)).astype(np.float32) for n in (40, 40, 17)] for _ in range(2)]
    pool = [stored(tmp_path, f"{dtype}-{c}", p, dtype) for c, p in enumerate(parts)]
    whole = [np.asarray(p) for p in pool]  # what the store holds, as one array (one 4,096-row block)
    targets = [rng.normal(size=(5, 24)) for _ in range(2)]
    weights = [0.7, 0.3]
    assert max(hi - lo for lo, hi, _ in pool[0].blocks()) == 7
    streamed = trak(pool, targets, weights, damping=0.05)
    one_block = trak(whole, targets, weights, damping=0.05)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float32" else dict(rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(streamed, one_block, **tol)
    np.testing.assert_allclose(one_block, reference(whole, targets, weights, 0.05), rtol=1e-9, atol=1e-12)
    reduce = lambda block: np.stack([block[:, :2].mean(1), block[:, 2:].max(1)], axis=1)  # noqa: E731
    np.testing.assert_allclose(trak(pool, targets, weights, damping=0.05, reduce=reduce), reduce(streamed), **tol)


def test_absolute_damping_is_tracers_lambda_and_the_default_weights_are_a_uniform_mean():
    rng = np.random.default_rng(4)
    xs = [rng.normal(size=(30, 6)) for _ in range(3)]
    ys = [rng.normal(size=(4, 6)) for _ in range(3)]
    expected = sum(x @ np.linalg.solve(x.T @ x + 2.5 * np.eye(6), y.T) for x, y in zip(xs, ys)) / 3
    np.testing.assert_allclose(trak(xs, ys, damping=2.5, absolute=True), expected, rtol=1e-10)
    # a pool row without a gradient (NaN) stays NaN and leaves X^T X alone
    holed = [x.copy() for x in xs]
    for x in holed:
        x[5] = np.nan
    kept = [np.delete(x, 5, axis=0) for x in xs]
    got = trak(holed, ys, damping=0.1)
    assert np.isnan(got[5]).all()
    np.testing.assert_allclose(np.delete(got, 5, axis=0), trak(kept, ys, damping=0.1), rtol=1e-10)
    for bad in (-0.1, 0.0, float("nan")):
        with pytest.raises(ValueError, match="damping must be positive"):
            trak(xs, ys, damping=bad)
    with pytest.raises(SelectkitError, match="singular"):  # traker's lambda_reg = 0 with fewer rows than k
        trak([xs[0][:4]], [ys[0]], damping=0.0, absolute=True)


def test_a_large_damping_ranks_like_tracin():
    """(X^T X + lambda I)^-1 -> I / lambda: TRAK becomes TracIn's inner products, scaled."""
    rng = np.random.default_rng(5)
    basis = rng.normal(size=(4, 32))  # correlated features, so a small damping does reorder rows
    xs = [rng.normal(size=(200, 4)) @ basis + 0.1 * rng.normal(size=(200, 32)) for _ in range(2)]
    ys = [rng.normal(size=(3, 32)) for _ in range(2)]
    lrs = [2e-4, 1e-4]
    dot = tracin(xs, ys, lrs)
    weights = [lr / sum(lrs) for lr in lrs]
    large, small = trak(xs, ys, weights, damping=1e6), trak(xs, ys, weights, damping=1e-3)
    assert spearman(large, dot, axis=0).min() > 0.9999
    assert spearman(small, dot, axis=0).max() < 0.9  # not a vacuous check: a small damping differs


# ---------------------------------------------------------------- a recipe, against the store's .npy files


RECIPE = """
selectkit: 1
name: trak
seed: 3
data:
  pool: {{path: {root}/recipes/data/pool.jsonl, id: id, limit: 48}}
  targets:
    one: {{path: {root}/recipes/data/target_politics.jsonl, id: id, limit: 3}}
    film: {{path: {root}/recipes/data/target_film.jsonl, id: id, limit: 4}}
models:
  lm:
    path: {root}/recipes/models/tiny-lm
    kind: causal-lm
    max_length: 48{warmup}
scores:
  trak:
    use: influence.trak
    model: lm
    targets: [one, film]
    with: {{proj_dim: 96, batch_size: 8, damping: {damping}}}
  trakmax:
    use: influence.trak
    model: lm
    targets: [one, film]
    with: {{proj_dim: 96, batch_size: 8, damping: {damping}, aggregate: max}}
  trac:   # the same gradient store; its manifest entry says where that store is
    use: influence.tracin
    model: lm
    targets: [one, film]
    with: {{proj_dim: 96, batch_size: 8}}
select:
  - use: topk
    with: {{score: trak.film, budget: 10}}
output: {{dir: {out}, formats: [parquet]}}
"""


WARMUP = """
    warmup: {fraction: 0.25, epochs: 2, learning_rate: 2.0e-4, batch_size: 8, micro_batch_size: 8,
             lora: {r: 4, alpha: 16, dropout: 0.0}}"""


def store_rows(cache: Path, store: dict) -> list[np.ndarray]:
    """One (N, k) float64 array per checkpoint, from the entry's .npy files with numpy alone."""
    out = []
    for point in range(store["points"]):
        parts = []
        for shard in range(point * store["row_shards"], (point + 1) * store["row_shards"]):
            folder = cache / store["artifact"] / store["key"] / f"shard-{shard:05d}"
            names = json.loads((folder / "meta.json").read_text())["arrays"]
            arrays = {n: np.load(folder / f"a{i:03d}.npy") for i, n in enumerate(names)}
            assert "scales" not in arrays  # k = 96 is stored float32
            parts.append(arrays["features"].astype(np.float64))
        out.append(np.concatenate(parts))
    return out


def test_a_recipes_columns_equal_numpy_on_the_store(tmp_path, monkeypatch):
    """Two warmup checkpoints (LoRA), two targets, 16-row shards read in 5-row blocks. The reference
    solves (X^T X + lambda I) once over the whole X read from the .npy files, weighs checkpoints
    lr / sum(lr), then takes each target's mean (and max) over its examples. (~15 s on 2 loaded cores:
    the warmup; the model itself without one is slower, every Linear layer's gradient.)"""
    pytest.importorskip("torch")
    import selectkit.storage.gradient_store as store
    from selectkit.api import run as run_recipe

    monkeypatch.setattr(store, "block_rows", lambda dim: 5)
    damping = 0.05
    recipe = tmp_path / "trak.yaml"
    recipe.write_text(RECIPE.format(root=ROOT, out=tmp_path / "out", damping=damping, warmup=WARMUP))
    cache = tmp_path / "cache"
    out = run_recipe(recipe, cache_dir=cache, options={"shard_rows": 16})
    entry = out.manifest["scores"]["trac"]["influence"]
    assert "influence" not in out.manifest["scores"]["trak"]  # no inner-product form for explain to index
    pool = store_rows(cache, entry["pool"])
    assert entry["pool"]["row_shards"] == 3 and len(pool) == 2 and pool[0].shape == (48, 96)
    targets = [np.concatenate(parts) for parts in zip(store_rows(cache, entry["targets"]["one"]),
                                                      store_rows(cache, entry["targets"]["film"]))]
    lrs = [c["lr"] for c in entry["checkpoints"]]
    assert len(lrs) == 2 and min(lrs) > 0
    table = pl.read_parquet(tmp_path / "out" / "selection.parquet")
    # the store's rows are the table's rows: TracIn's column is the plain product
    tr = sum(lr * x @ y.T for x, y, lr in zip(pool, targets, lrs))
    np.testing.assert_allclose(table["score.trac.one"].to_numpy(), tr[:, :3].mean(1), rtol=1e-7, atol=1e-12)
    exact = reference(pool, targets, [lr / sum(lrs) for lr in lrs], damping)  # (48, 3 + 4)
    for name, how in (("trak", np.mean), ("trakmax", np.max)):
        for col, (lo, hi) in (("one", (0, 3)), ("film", (3, 7))):
            expected = how(exact[:, lo:hi], axis=1)
            got = table[f"score.{name}.{col}"].to_numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
    picked = table.filter(pl.col("selected"))["score.trak.film"].to_numpy()
    assert len(picked) == 10 and picked.min() >= np.sort(exact[:, 3:].mean(1))[-10] - 1e-12


# ---------------------------------------------------------------- validate


def test_a_negative_damping_is_a_located_validate_error(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.format(root=ROOT, out=tmp_path / "out", damping=-0.1, warmup=WARMUP))
    done = cli("validate", recipe)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    line = recipe.read_text().splitlines().index("    with: {proj_dim: 96, batch_size: 8, damping: -0.1}") + 1
    assert f"{recipe}:{line}:" in done.stderr and "scores.trak.with.damping" in done.stderr, done.stderr
    assert "greater than 0" in done.stderr, done.stderr
    no_projection = RECIPE.replace("proj_dim: 96, batch_size: 8, damping: {damping}}", "proj_dim: null}")
    recipe.write_text(no_projection.format(root=ROOT, out=tmp_path / "out", damping=0.1, warmup=""))
    done = cli("validate", recipe)
    assert done.returncode == 1 and "scores.trak.with.proj_dim" in done.stderr, done.stderr


def test_lds_measures_trak_as_a_gradient_score_and_it_may_not_be_lazy():
    """evaluate.lds picks every gradient score against targets; TRAK's X^T X reads the whole pool."""
    from types import SimpleNamespace

    from selectkit.contract.registry import default_registry
    from selectkit.planning.retrain import measured_scores
    from selectkit_plugins.scorers.influence import Trak

    scorer = Trak(Trak.Params())
    node = SimpleNamespace(scorer=scorer, targets=["rev"], surrogate=None, lazy=False, model="lm")
    assert measured_scores(SimpleNamespace(scores=None), {"trak": node}, default_registry()) == ["trak"]
    assert not Trak.reads_rows_alone() and scorer.influence_form() is None
    assert dict(scorer.feature_requests(["rev"])[0].settings)["proj_dim"] == 2048  # traker's default k


def test_without_scipy_numpys_solve_gives_the_same_scores(monkeypatch):
    import sys

    rng = np.random.default_rng(6)
    xs, ys = [rng.normal(size=(40, 12))], [rng.normal(size=(3, 12))]
    with_scipy = trak(xs, ys, damping=0.1)
    monkeypatch.setitem(sys.modules, "scipy.linalg", None)  # `from scipy.linalg import ...` raises ImportError
    np.testing.assert_allclose(trak(xs, ys, damping=0.1), with_scipy, rtol=1e-10)
    with pytest.raises(SelectkitError, match="singular"):
        trak([xs[0][:4]], ys, damping=0.0, absolute=True)
