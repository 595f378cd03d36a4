"""optimal_transport (TAROT): the spec's E2b multimodal case, potentials, neighbour backends, otm."""

from __future__ import annotations

import numpy as np
import ot
import pytest
from _pools import norm_ctx, pool, select_ctx

from selectkit.contract.components import Score, Shape
from selectkit.errors import DataError
from selectkit_plugins.normalizers.whiten import Whiten
from selectkit_plugins.selectors._transport import OTSettings, cost, neighbours, source_potentials, unit_rows
from selectkit_plugins.selectors.optimal_transport import OptimalTransport

MODES, D, BUDGET = 6, 8, 300


def multimodal(seed: int = 0, per_mode: int = 500, target_mix=(120, 60, 20, 0, 0, 0)):
    """E2b: six Gaussian modes in 7 dims plus one nuisance dimension with sigma 40; target 0.6/0.3/0.1."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(MODES, D - 1)) * 3

    def sample(counts):
        parts = [np.hstack([centers[m] + rng.normal(size=(c, D - 1)), rng.normal(size=(c, 1)) * 40])
                 for m, c in enumerate(counts)]
        return np.vstack(parts), np.repeat(np.arange(MODES), counts)

    pool_x, pool_mode = sample([per_mode] * MODES)
    target_x, _ = sample(target_mix)
    return Score(values=pool_x, shape=Shape.FEATURES, target_features={"dev": target_x}), pool_mode


def whitened(score: Score) -> Score:
    return Whiten().run(score, norm_ctx(len(score.values)))


def ot_to_target(score_w: Score, indices: np.ndarray) -> float:
    """Exact OT cost, in whitened cosine geometry, from the selection to the targets."""
    x, y = unit_rows(score_w.values[indices]), unit_rows(score_w.target_features["dev"])
    return float(ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), cost(x, y)))


def select(score: Score, **params):
    params.setdefault("budget", BUDGET)
    return OptimalTransport(OptimalTransport.Params(**params)).run(select_ctx(score))


def test_e2b_beats_greedy_and_unwhitened_and_covers_every_target_mode():
    raw, mode = multimodal()
    white = whitened(raw)
    tarot = select(white)
    x, y = unit_rows(white.values), unit_rows(white.target_features["dev"])
    greedy = np.argsort(-(x @ y.T).mean(axis=1), kind="stable")[:BUDGET]  # LESS/DSDM: top-k of the row mean
    unwhitened = select(raw)
    d_tarot, d_greedy, d_raw = (ot_to_target(white, s) for s in (tarot.indices, greedy, unwhitened.indices))
    assert d_tarot < d_greedy and d_tarot < d_raw
    assert np.bincount(mode[greedy], minlength=MODES)[0] / BUDGET > 0.9  # greedy collapses on mode 0
    share = np.bincount(mode[tarot.indices], minlength=MODES) / BUDGET
    assert len(tarot.indices) == BUDGET == len(np.unique(tarot.indices))
    assert np.all(share[:3] >= 0.05)
    np.testing.assert_allclose(share[:3], [0.6, 0.3, 0.1], atol=0.08)
    # lowest potentials complete the last layer better than the reference's highest (spec E2c)
    assert d_tarot <= ot_to_target(white, select(white, tie_break="highest_potential").indices)
    # whitening inside the selector equals the whiten normalizer before it
    np.testing.assert_array_equal(select(raw, whiten="cholesky").indices, tarot.indices)
    np.testing.assert_array_equal(select(raw, whiten="zca").indices, tarot.indices)


def test_potentials_are_the_exact_duals_and_rank_by_closeness():
    rng = np.random.default_rng(1)
    x, y = unit_rows(rng.normal(size=(40, 5))), unit_rows(rng.normal(size=(30, 5)) + [3, 0, 0, 0, 0])
    f = source_potentials(x, y, OTSettings(), rng)
    _, log = ot.emd(np.full(40, 1 / 40), np.full(30, 1 / 30), cost(x, y), log=True)
    np.testing.assert_allclose(f, log["u"], atol=1e-9)
    assert np.corrcoef(f, cost(x, y).mean(axis=1))[0, 1] > 0.8  # high potential = far from the target
    soft = source_potentials(x, y, OTSettings(solver="sinkhorn", reg=0.05), rng)
    assert np.corrcoef(f, soft)[0, 1] > 0.9
    sub = source_potentials(x, y, OTSettings(max_points=20), np.random.default_rng(0))
    assert sub.shape == (40,) and np.corrcoef(f, sub)[0, 1] > 0.5


def test_numpy_neighbours_match_faiss():
    rng = np.random.default_rng(2)
    pool_x, targets = unit_rows(rng.normal(size=(500, 6))), unit_rows(rng.normal(size=(37, 6)))
    idx_f, sim_f, used = neighbours(pool_x, targets, 25, backend="faiss")
    idx_n, sim_n, used_n = neighbours(pool_x, targets, 25, backend="numpy", memory_mb=0.05)  # several blocks
    assert (used, used_n) == ("faiss", "numpy")
    np.testing.assert_array_equal(idx_f, idx_n)
    np.testing.assert_allclose(sim_f, sim_n, atol=1e-5)
    brute = np.argsort(-(targets @ pool_x.T), axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(idx_n, brute)


def test_otm_estimates_the_relevant_fraction():
    raw, mode = multimodal(3, per_mode=150, target_mix=(60, 60, 0, 0, 0, 0))
    picked = select(whitened(raw), mode="otm", budget=None, kfold=5)
    relevant = 2 / MODES
    ratio = picked.diagnostics["estimated_ratio"]
    assert relevant / 2 <= ratio <= relevant * 2
    assert np.mean(mode[picked.indices] < 2) > 0.8
    assert len(picked.diagnostics["fold_k"]) == 5
    capped = select(whitened(raw), mode="otm", budget=20, kfold=5)
    np.testing.assert_array_equal(capped.indices, picked.indices[:20])


def test_weights_candidates_budgets_and_reproducibility():
    raw, _ = multimodal(4, per_mode=100, target_mix=(30, 10, 0, 0, 0, 0))
    white = whitened(raw)
    cands = np.arange(0, 600, 3)
    ctx = select_ctx(white, candidates=cands, seed=7)
    params = OptimalTransport.Params(budget="10%", weighting="potentials", ot={"max_points": 50}, mode="fixed_size")
    one = OptimalTransport(params).run(ctx)
    assert len(one.indices) == 20 and set(one.indices) <= set(cands) and one.weights.shape == (20,)
    two = OptimalTransport(params).run(select_ctx(white, candidates=cands, seed=7))
    np.testing.assert_array_equal(one.indices, two.indices)
    np.testing.assert_array_equal(one.weights, two.weights)
    texts = [("w " * (i % 9 + 1)).strip() for i in range(600)]
    token_ctx = select_ctx(white, candidates=cands, data=pool(600, texts=texts))
    by_tokens = OptimalTransport(OptimalTransport.Params(budget={"tokens": 60})).run(token_ctx)
    assert 50 < np.asarray(token_ctx.pool.token_counts)[by_tokens.indices].sum() <= 60
    assert set(by_tokens.indices) <= set(cands)
    otm = OptimalTransport.Params(mode="otm", kfold=3, k_schedule="geometric", ot={"max_points": 30, "minibatches": 2})
    a = OptimalTransport(otm).run(select_ctx(white, seed=3))
    b = OptimalTransport(otm).run(select_ctx(white, seed=3))
    np.testing.assert_array_equal(a.indices, b.indices)


def test_params_and_memory_guard():
    with pytest.raises(ValueError, match="needs a budget"):
        OptimalTransport.Params(mode="fixed_size")
    raw, _ = multimodal(5, per_mode=20, target_mix=(10, 0, 0, 0, 0, 0))
    with pytest.raises(DataError, match="memory_mb"):
        select(raw, memory_mb=1e-4)
    with pytest.raises(DataError, match="target features"):
        select(Score(values=raw.values, shape=Shape.FEATURES))
