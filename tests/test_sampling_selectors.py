"""soft_cap (FLYT), round_robin_targets (Influence Distillation) and stratified: known answers,
seeding and budgets."""

from __future__ import annotations

import numpy as np
import pytest
from _pools import pool, select_ctx
from pydantic import ValidationError

from selectkit.contract.components import Score, Shape
from selectkit.errors import DataError
from selectkit_plugins.selectors.round_robin_targets import RoundRobinTargets, round_robin_order
from selectkit_plugins.selectors.soft_cap import SoftCap
from selectkit_plugins.selectors.stratified import Stratified


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def soft_cap(score: Score, seed: int = 0, **params):
    return SoftCap(SoftCap.Params(**params)).run(select_ctx(score, seed=seed))


def test_soft_cap_caps_repetition_far_below_plain_softmax():
    """E5: N=5000, penalty 0.15, batches of 50, 5000 draws."""
    scores = np.random.default_rng(0).normal(size=5000) * 2.5
    sel = soft_cap(Score(values=scores), budget=5000, repetition_penalty=0.15, batch_size=50)
    counts = np.zeros(5000, dtype=int)
    counts[sel.indices] = sel.counts
    p = np.exp(scores - scores.max())
    plain = np.random.default_rng(1).multinomial(5000, p / p.sum())
    assert counts.sum() == 5000 == sel.diagnostics["draws"]
    assert counts.max() <= plain.max() / 5
    assert spearman(counts, scores) > 0.5  # counts stay monotone in score
    assert np.all(np.diff(sel.counts) <= 0)  # indices ordered by count
    assert (counts > 0).sum() > (plain > 0).sum()


def test_soft_cap_seeding_infinite_penalty_nan_and_orientation():
    scores = np.random.default_rng(2).normal(size=300)
    a = soft_cap(Score(values=scores), seed=4, budget=200, batch_size=7)
    b = soft_cap(Score(values=scores), seed=4, budget=200, batch_size=7)
    c = soft_cap(Score(values=scores), seed=5, budget=200, batch_size=7)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(a.counts, c.counts) or not np.array_equal(a.indices, c.indices)
    once = soft_cap(Score(values=scores), budget=300, repetition_penalty=1e9, batch_size=13)
    assert once.counts.max() == 1 and len(once.indices) == 300
    with_nan = scores.copy()
    with_nan[:10] = np.nan
    assert not set(soft_cap(Score(values=with_nan), budget=290, repetition_penalty=1e9).indices) & set(range(10))
    many = soft_cap(Score(values=scores), budget=900, batch_size=50)  # more draws than examples
    assert many.counts.sum() == 900
    low = soft_cap(Score(values=-scores, higher_is_better=False), seed=4, budget=200, batch_size=7)
    np.testing.assert_array_equal(low.indices, a.indices)


def test_soft_cap_token_budget():
    texts = ["a " * (i % 5 + 1) for i in range(100)]
    ctx = select_ctx(Score(values=np.zeros(100)), data=pool(100, texts=texts))
    sel = SoftCap(SoftCap.Params(budget={"tokens": 250}, batch_size=10)).run(ctx)
    used = int((np.asarray(ctx.pool.token_counts)[sel.indices] * sel.counts).sum())
    assert 245 < used <= 250


def matrix(values: np.ndarray, tasks=None) -> Score:
    return Score(values=values, shape=Shape.MATRIX, columns=tuple(f"t{j}" for j in range(values.shape[1])),
                 tasks=tuple(tasks or [f"t{j}" for j in range(values.shape[1])]))


def test_round_robin_serves_every_target_first():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(1000, 8)) * np.array([100, 1, 1, 1, 0.01, 1, 1, 1])
    sel = RoundRobinTargets(RoundRobinTargets.Params(budget=40)).run(select_ctx(matrix(values), seed=1))
    first = set(sel.indices[:8])
    assert all(int(np.argmax(values[:, j])) in first for j in range(8))
    assert len(np.unique(sel.indices)) == 40
    assert sel.diagnostics["picks_per_task"] == {f"t{j}": 5 for j in range(8)}
    again = RoundRobinTargets(RoundRobinTargets.Params(budget=40)).run(select_ctx(matrix(values), seed=1))
    np.testing.assert_array_equal(sel.indices, again.indices)


def reference_round_robin(scores: np.ndarray, k: int, visits: list[np.ndarray]) -> list[int]:
    """The reference `_perform_selection_rr`, with the visit orders given."""
    work = scores.T.copy()
    out: list[int] = []
    for order in visits:
        for t in order:
            if len(out) >= k:
                return out
            i = int(np.argmax(work[t]))
            out.append(i)
            work[:, i] = -1e8
    return out


def test_round_robin_equals_the_reference_loop_with_ties():
    values = np.round(np.random.default_rng(4).normal(size=(300, 5)), 1)
    picks, _ = round_robin_order(values, 120, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    visits = [rng.permutation(5) for _ in range(30)]
    assert picks.tolist() == reference_round_robin(values, 120, visits)
    fixed, by = round_robin_order(values, 300, None)
    assert by[:5].tolist() == [0, 1, 2, 3, 4] and len(np.unique(fixed)) == 300
    tasks = RoundRobinTargets(RoundRobinTargets.Params(budget=10, granularity="task", visit_order="fixed")).run(
        select_ctx(matrix(values, tasks=["a", "a", "b", "b", "b"])))
    assert tasks.diagnostics["picks_per_task"] == {"a": 5, "b": 5}


def stratified(score: Score, data=None, scores=None, **params):
    n = len(score.values)
    ctx = select_ctx(score, data=data or pool(n), scores=scores)
    return Stratified(Stratified.Params(**params)).run(ctx)


def test_stratified_takes_the_top_fraction_of_every_stratum():
    rng = np.random.default_rng(5)
    cluster = np.repeat(["a", "b", "c", "d"], [100, 200, 300, 400])
    values = rng.normal(size=1000) + np.repeat([5.0, 0, -5, 0], [100, 200, 300, 400])  # topk would take "a"
    sel = stratified(Score(values=values), pool(1000, cluster=cluster), column="cluster", budget="10%")
    assert sel.diagnostics["kept_per_stratum"] == {"a": 10, "b": 20, "c": 30, "d": 40}
    for g in "abcd":
        members = np.flatnonzero(cluster == g)
        best = members[np.argsort(-values[members])][: len(members) // 10]
        assert set(best) == set(sel.indices) & set(members)
    # learning percentage: the lowest 10% per cluster (prefer worst)
    worst = stratified(Score(values=values), pool(1000, cluster=cluster), column="cluster", budget="10%",
                       prefer="worst")
    a = np.flatnonzero(cluster == "a")
    assert set(a[np.argsort(values[a])][:10]) == set(worst.indices) & set(a)
    equal = stratified(Score(values=values), pool(1000, cluster=cluster), column="cluster", budget=40,
                       allocation="equal")
    assert equal.diagnostics["kept_per_stratum"] == {"a": 10, "b": 10, "c": 10, "d": 10}


def test_stratified_by_score_bins_and_param_checks():
    rng = np.random.default_rng(6)
    length = rng.integers(1, 1000, size=500).astype(float)
    quality = rng.normal(size=500)
    scores = {"quality": Score(values=quality), "length": Score(values=length)}
    sel = stratified(scores["quality"], scores=scores, bin_score="length", bins=5, budget=50)
    assert sel.diagnostics["strata"] == 5
    assert sorted(sel.diagnostics["kept_per_stratum"].values()) == [10] * 5
    with pytest.raises(ValidationError):
        Stratified.Params(budget=5)
    with pytest.raises(ValidationError):
        Stratified.Params(budget=5, column="c", bin_score="s")
    with pytest.raises(DataError, match="did you mean 'cluster'"):
        stratified(Score(values=quality), pool(500, cluster=["x"] * 500), column="clustre", budget=5)
    assert Stratified.score_params == {"bin_score": frozenset({Shape.VECTOR})}


def test_every_selector_is_registered():
    from selectkit.contract.registry import load_registry

    registry = load_registry()
    for name in ("balanced", "optimal_transport", "soft_cap", "round_robin_targets", "stratified"):
        assert registry.get("selectors", name).Params.model_config.get("extra") == "forbid"
