"""Cluster-diverse selectors: kmeans_diverse (kMQ), sensitivity_sampling, cluster_bandit (Quad), dedup.
Known answers on planted synthetic data (clusters, outliers and losses whose right selection is known
by construction)."""

from __future__ import annotations

import numpy as np
import pytest
from _pools import pool
from threadpoolctl import threadpool_limits

from selectkit.contract.clusters import KMeansParams, allocate, gumbel_top, kmeans
from selectkit.contract.components import Score, SelectContext, Shape
from selectkit_plugins.selectors.cluster_bandit import ClusterBandit, centroid_neighbours
from selectkit_plugins.selectors.dedup import Dedup
from selectkit_plugins.selectors.kmeans_diverse import KMeansDiverse, cluster_quotas
from selectkit_plugins.selectors.sensitivity import SensitivitySampling


@pytest.fixture(autouse=True)
def _one_thread():
    """OpenMP k-means on a busy shared machine is far faster single-threaded; results do not depend on it."""
    with threadpool_limits(1):
        yield


def blobs(sizes, dim=8, spread=0.05, seed=0):
    """Well-separated Gaussian blobs: (features, blob label of each row), rows shuffled."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(sizes), dim)) * 3
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centers[labels] + spread * rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm], labels[perm]


def ctx(features, scores=None, seed=0, candidates=None, stage="stage0"):
    n = len(features)
    feats = Score(values=np.asarray(features), shape=Shape.FEATURES)
    return SelectContext(candidates=np.arange(n) if candidates is None else np.asarray(candidates), pool=pool(n),
                         seed=seed, stage=stage, score=feats, scores={"emb": feats, **(scores or {})})


def run(cls, c, **params):
    return cls(cls.Params(score="emb", **params)).run(c)


# ---------------------------------------------------------------- kmeans_diverse


SIZES = [200, 100, 50, 20, 10, 5, 3, 2]


def test_kmeans_diverse_covers_every_cluster_where_quality_topk_does_not():
    x, blob = blobs(SIZES)
    quality = Score(values=-blob.astype(float))  # the big blob is "best": top-k by quality sees one cluster
    sel = run(KMeansDiverse, ctx(x, {"q": quality}), k=8, budget=40, quality="q")
    assert len(sel.indices) == 40 and len(np.unique(sel.indices)) == 40
    assert set(blob[sel.indices]) == set(range(8))  # every non-empty cluster covered
    assert set(blob[np.argsort(blob, kind="stable")[:40]]) == {0}  # quality top-k covers one
    counts = np.bincount(blob[sel.indices], minlength=8)
    assert counts[0] > counts[1] > counts[2] >= counts[3]  # proportional beyond the first one each


def test_kmeans_diverse_redistributes_shortfall_of_small_clusters():
    x, blob = blobs(SIZES)
    full = run(KMeansDiverse, ctx(x), k=8, budget=80, allocation="uniform")
    counts = np.bincount(blob[full.indices], minlength=8)
    assert len(full.indices) == 80
    assert list(counts[5:]) == [5, 3, 2]  # small clusters give all they have ...
    assert counts[:5].min() >= 10 and counts[:5].sum() == 70  # ... and the 20 they lack go to the others
    lost = run(KMeansDiverse, ctx(x), k=8, budget=80, allocation="uniform", redistribute=False)
    assert len(lost.indices) == 60  # kMQ reference: floor(b/K)=10 per cluster, shortfall dropped
    assert list(np.bincount(blob[lost.indices], minlength=8)) == [10] * 5 + [5, 3, 2]


def test_kmeans_diverse_order_interleaves_clusters():
    x, blob = blobs(SIZES)
    sel = run(KMeansDiverse, ctx(x), k=8, budget=39, allocation="proportional")
    assert len(set(blob[sel.indices[:8]])) == 8  # with cover, every cluster's single pick leads


def test_kmeans_diverse_top_quality_within_clusters():
    x, blob = blobs([30, 30, 30])
    q = np.random.default_rng(1).normal(size=90)
    sel = run(KMeansDiverse, ctx(x, {"q": Score(values=q)}), k=3, budget=9, quality="q", temperature=0)
    for b in range(3):
        members = np.flatnonzero(blob == b)
        assert set(sel.indices[blob[sel.indices] == b]) == set(members[np.argsort(-q[members])[:3]])


def test_gumbel_top_draws_proportional_to_softmax():
    logits = np.log([0.5, 0.3, 0.1, 0.1])
    rng = np.random.default_rng(0)
    first = np.bincount([gumbel_top(logits, 2, rng)[0] for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(first, [0.5, 0.3, 0.1, 0.1], atol=0.03)


def test_allocate_and_quotas():
    q = allocate(np.array([100, 3, 0, 50]), 60, np.array([1.0, 1.0, 1.0, 1.0]))
    assert q.sum() == 60 and q[1] == 3 and q[2] == 0 and (q <= [100, 3, 0, 50]).all()
    assert allocate(np.array([2, 2]), 10, np.ones(2)).tolist() == [2, 2]  # capacity bounds the budget
    small = cluster_quotas(np.array([50, 30, 20, 0]), 2, "proportional", True, True, np.random.default_rng(0))
    assert small.sum() == 2 and small[3] == 0 and small.max() == 1


@pytest.mark.parametrize("params", [{"backend": "sklearn", "minibatch_min_points": 10}, {"backend": "faiss"}],
                         ids=["minibatch", "faiss"])
def test_kmeans_backends_for_large_pools_recover_blobs(params):
    x, blob = blobs([40, 30, 20])
    labels, centers = kmeans(x, 3, np.random.default_rng(0), KMeansParams(**params))
    assert centers.shape == (3, 8)
    assert len({(a, b) for a, b in zip(blob, labels)}) == 3  # one label per blob
    again, _ = kmeans(x, 3, np.random.default_rng(0), KMeansParams(**params))
    np.testing.assert_array_equal(labels, again)


# ---------------------------------------------------------------- sensitivity_sampling


def test_sensitivity_sampling_is_unbiased_with_lower_variance_than_uniform():
    """E8: weighted estimate of the mean loss, many seeds; loss Lipschitz in the embedding."""
    x, _ = blobs([300, 200, 200, 150, 100, 50], dim=2, spread=0.3, seed=3)
    loss = np.linalg.norm(x - np.array([9.0, 9.0]), axis=1)
    true_mean, n, m = loss.mean(), len(x), 40
    scores = {"loss": Score(values=loss, higher_is_better=False)}
    est, unif = [], []
    for seed in range(120):
        sel = run(SensitivitySampling, ctx(x, scores, seed=seed), k=6, budget=m, loss="loss",
                  kmeans={"niter": 20})
        assert sel.counts.sum() == m and sel.diagnostics["loss_reads"] == 6
        est.append(float(np.sum(sel.counts * sel.weights * loss[sel.indices])) / n)
        unif.append(loss[np.random.default_rng(10_000 + seed).integers(n, size=m)].mean())
    est, unif = np.array(est), np.array(unif)
    assert abs(est.mean() - true_mean) < 3 * est.std() / np.sqrt(len(est))
    assert est.std() < 0.5 * unif.std()


def test_sensitivity_sampling_without_loss_and_mixture():
    x, _ = blobs([40, 40, 20], dim=3)
    for extra in ({}, {"mixture": 0.5}):
        sel = run(SensitivitySampling, ctx(x), k=3, budget=30, **extra)
        assert sel.counts.sum() == 30 and (sel.weights > 0).all() and sel.diagnostics["loss_reads"] == 0


def test_sensitivity_sampling_rejects_token_budgets():
    with pytest.raises(ValueError, match="count or fraction"):
        SensitivitySampling.Params(score="emb", budget={"tokens": 100})


# ---------------------------------------------------------------- cluster_bandit (Quad)


class RecordingValues:
    """Score values that remember which rows were read, to check the oracle is lazy."""

    def __init__(self, values):
        self.values, self.read = np.asarray(values), set()

    def __getitem__(self, idx):
        self.read.update(np.atleast_1d(idx).tolist())
        return self.values[idx]

    def __len__(self):
        return len(self.values)


def bandit_world(seed=0, arms=30, size=60):
    x, blob = blobs([size] * arms, dim=8, seed=seed)
    mu = np.random.default_rng(seed + 1).normal(size=arms)
    reward = mu[blob] + np.random.default_rng(seed + 2).normal(size=len(blob))
    return x, blob, mu, reward


BANDIT = {"k": 30, "arms_per_round": 3, "probe_per_arm": 5, "take_per_pull": 10, "budget": 150,
          "max_rounds": 60, "kmeans": {"niter": 20}}


def test_cluster_bandit_picks_higher_reward_clusters_than_random_and_reads_only_probes():
    gains, top5 = [], []
    for seed in range(3):
        x, blob, mu, reward = bandit_world(seed)
        values = RecordingValues(reward)
        sel = run(ClusterBandit, ctx(x, {"r": Score(values=values)}, seed=seed), reward="r", ucb_alpha=0.5, **BANDIT)
        assert len(sel.indices) == 150
        assert len(values.read) == sel.diagnostics["probed"] < len(x) / 2
        random_mu = mu[blob[np.random.default_rng(seed).permutation(len(x))[:150]]].mean()
        gains.append(mu[blob[sel.indices]].mean() - random_mu)
        top5.append(np.isin(blob[sel.indices], np.argsort(-mu)[:5]).mean())
    assert min(gains) > 0.5  # random picks have mean μ ≈ 0 (μ ~ N(0, 1))
    assert np.mean(top5) > 0.3  # 5 of 30 arms hold 17% of the pool


def test_cluster_bandit_explores_more_as_ucb_weight_grows():
    x, _, _, reward = bandit_world(0)
    pulled = [run(ClusterBandit, ctx(x, {"r": Score(values=reward)}), reward="r", ucb_alpha=a,
                  **BANDIT).diagnostics["clusters_pulled"] for a in (0.0, 0.5, 5.0)]
    assert pulled[0] <= pulled[1] <= pulled[2] and pulled[2] > pulled[0]


def test_cluster_bandit_shares_rewards_with_neighbours_within_radius():
    centers = np.array([[0.0, 0.0], [0.1, 0.0], [0.3, 0.0], [5.0, 0.0]])
    near = centroid_neighbours(centers, radius=0.2)
    idx, w = near[0]
    assert dict(zip(idx.tolist(), np.round(w, 6).tolist())) == {0: 1.0, 1: 0.5}
    assert near[3][0].tolist() == [3]
    assert centroid_neighbours(centers, 0.0)[1][0].tolist() == [1]


# ---------------------------------------------------------------- dedup


def planted_duplicates(seed=0, n=200, dups=20, dim=32):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    copies = base[:dups] + 1e-3 * rng.normal(size=(dups, dim))
    return np.vstack([base, copies])  # row n+i duplicates row i


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_dedup_removes_planted_duplicates_and_keeps_the_better_one(backend):
    x = planted_duplicates()
    quality = np.zeros(220)
    quality[200:210] = 1.0  # the copy is better for the first ten pairs, worse for the rest
    quality[10:20] = 1.0
    sel = run(Dedup, ctx(x, {"q": Score(values=quality)}), prefer="q", backend=backend, max_block=1000)
    kept = set(sel.indices.tolist())
    assert len(kept) == 200 and sel.diagnostics["removed"] == 20 and sel.diagnostics["groups"] == 20
    assert kept.isdisjoint(range(10)) and {200 + i for i in range(10)} <= kept
    assert set(range(10, 20)) <= kept and kept.isdisjoint(range(210, 220))
    first = run(Dedup, ctx(x), backend=backend)  # no score: the first in pool order stays
    assert set(first.indices.tolist()) == set(range(200))


def test_dedup_does_not_chain_and_respects_candidates():
    angles = np.array([0.0, 0.25, 0.5])  # cos distance 0.031 between neighbours, 0.122 end to end
    x = np.stack([np.cos(angles), np.sin(angles)], 1)
    assert run(Dedup, ctx(x), threshold=0.05, backend="numpy").indices.tolist() == [0, 2]
    assert run(Dedup, ctx(x, candidates=[1, 2]), threshold=0.05).indices.tolist() == [1]
    assert Dedup.budget_rule == "none"


# ---------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("name", ["kmeans_diverse", "sensitivity_sampling", "cluster_bandit"])
def test_stochastic_selectors_follow_the_seed_not_the_thread_count(name):
    x, blob, _, reward = bandit_world(0, arms=10, size=30)
    scores = {"r": Score(values=reward)}
    cls, params = {
        "kmeans_diverse": (KMeansDiverse, {"k": 10, "budget": 40, "quality": "r"}),
        "sensitivity_sampling": (SensitivitySampling, {"k": 10, "budget": 40, "loss": "r2"}),
        "cluster_bandit": (ClusterBandit, {**BANDIT, "k": 10, "budget": 40, "reward": "r"}),
    }[name]
    scores["r2"] = Score(values=reward - reward.min())
    cands = np.arange(0, 300, 2)
    with threadpool_limits(1):
        one = run(cls, ctx(x, scores, seed=7, candidates=cands), **params)
    with threadpool_limits(2):
        two = run(cls, ctx(x, scores, seed=7, candidates=cands), **params)
    other = run(cls, ctx(x, scores, seed=8, candidates=cands), **params)
    np.testing.assert_array_equal(one.indices, two.indices)
    if one.weights is not None:
        np.testing.assert_allclose(one.weights, two.weights)
    assert np.isin(one.indices, cands).all()
    assert not np.array_equal(one.indices, other.indices)
