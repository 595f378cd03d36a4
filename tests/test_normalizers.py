"""Property tests of the normalizers: each one's defining invariant."""

from __future__ import annotations

import numpy as np
import pytest
from _pools import norm_ctx
from pydantic import ValidationError

from selectkit.contract.components import Score, Shape
from selectkit.errors import DataError
from selectkit_plugins.lib.columns import rank_fraction
from selectkit_plugins.normalizers.elementwise import Clip, MinMax, Rank, SignFlip, ZScore
from selectkit_plugins.normalizers.instance_zscore import ColumnMoments, InstanceZScore
from selectkit_plugins.normalizers.log import Log
from selectkit_plugins.normalizers.robust_zscore import RobustZScore
from selectkit_plugins.normalizers.softmax import Softmax
from selectkit_plugins.normalizers.whiten import Whiten

RNG = np.random.default_rng(0)


def vec(values, higher_is_better: bool = True) -> Score:
    return Score(values=np.asarray(values, dtype=np.float64), higher_is_better=higher_is_better)


def mat(values, tasks=None) -> Score:
    values = np.asarray(values, dtype=np.float64)
    cols = tuple(f"c{j}" for j in range(values.shape[1]))
    return Score(values=values, shape=Shape.MATRIX, columns=cols, tasks=tuple(tasks or ["t"] * values.shape[1]))


def run(cls, score: Score, ctx=None, **params) -> Score:
    return cls(cls.Params(**params)).run(score, ctx or norm_ctx(len(score.values)))


def test_zscore_vector_matrix_groups_and_affine_invariance():
    x = RNG.normal(3, 5, size=200)
    z = run(ZScore, vec(x)).values
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-9
    m = RNG.normal(size=(300, 4)) * [1, 10, 100, 0.1] + [0, 5, -5, 1]
    zm = run(ZScore, mat(m)).values
    np.testing.assert_allclose(zm.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(zm.std(0), 1, atol=1e-9)
    np.testing.assert_allclose(run(ZScore, mat(m * [2, 3, 4, 5] + 7)).values, zm, atol=1e-9)
    za = run(ZScore, mat(m), axis="all").values
    assert abs(za.mean()) < 1e-12 and abs(za.std() - 1) < 1e-9 and not np.allclose(za.std(0), 1)
    groups = np.repeat(["a", "b"], [120, 80])
    zg = run(ZScore, vec(x), norm_ctx(200, task=groups), group_by="task").values
    for g in "ab":
        assert abs(zg[groups == g].mean()) < 1e-12 and abs(zg[groups == g].std() - 1) < 1e-9
    assert np.all(run(ZScore, vec(np.full(10, 0.1))).values == 0)  # constant: exactly 0


def test_nan_policies_are_explicit():
    x = np.array([1.0, 2.0, np.nan, 4.0])
    kept = run(ZScore, vec(x)).values
    assert np.isnan(kept[2]) and abs(np.nanmean(kept)) < 1e-12
    with pytest.raises(DataError, match="NaN"):
        run(ZScore, vec(x), nan="raise")
    assert run(MinMax, vec(x), nan="fill_worst").values[2] == 0.0  # min is worst when higher is better
    assert run(MinMax, vec(x, higher_is_better=False), nan="fill_worst").values[2] == 1.0  # max is worst
    np.testing.assert_allclose(run(MinMax, vec(x), nan="fill_mean").values[2], (7 / 3 - 1) / 3)
    with pytest.raises(ValidationError):
        ZScore.Params(nan="drop")
    with pytest.raises(ValidationError):  # unknown keys are errors
        ZScore.Params(epsilon=1)
    with pytest.raises(DataError, match="did you mean 'task'"):
        run(ZScore, vec(x), norm_ctx(4, task=["a"] * 4), group_by="tsk")


def test_minmax_range_monotone_and_constant():
    x = RNG.normal(size=100)
    y = run(MinMax, vec(x)).values
    assert y.min() == 0 and y.max() == 1 and np.all(np.argsort(y) == np.argsort(x))
    assert np.all(run(MinMax, vec(np.ones(5)), constant_value=0.5).values == 0.5)


@pytest.mark.parametrize("method", ["average", "min", "max", "dense", "ordinal"])
def test_rank_matches_scipy_and_is_invariant_to_increasing_maps(method):
    from scipy.stats import rankdata

    x = np.round(RNG.normal(size=300), 1)  # many ties
    expected = rankdata(x, method=method)
    expected = expected / (expected.max() if method == "dense" else len(x))
    np.testing.assert_allclose(rank_fraction(x, method), expected)
    np.testing.assert_allclose(run(Rank, vec(np.exp(3 * x) + 1), method=method).values, expected)
    with_nan = rank_fraction(np.array([3.0, np.nan, 1.0]), method)
    assert np.isnan(with_nan[1]) and with_nan[0] == 1.0


def test_clip_quantile_is_idempotent_and_keeps_order():
    x = RNG.standard_t(2, size=500)
    once = run(Clip, vec(x), lower=0.05, upper=0.95, quantile=True)
    twice = run(Clip, once, lower=0.05, upper=0.95, quantile=True)
    np.testing.assert_array_equal(once.values, twice.values)
    inside = (x > once.values.min()) & (x < once.values.max())
    np.testing.assert_array_equal(once.values[inside], x[inside])
    assert run(Clip, vec(x), upper=1.0).values.max() == 1.0
    with pytest.raises(ValidationError):
        Clip.Params()
    with pytest.raises(ValidationError):
        Clip.Params(lower=-0.1, quantile=True)


def test_sign_flip_flips_orientation_but_not_the_order():
    s = vec(RNG.normal(size=50), higher_is_better=False)
    f = run(SignFlip, s)
    assert f.higher_is_better and np.array_equal(f.oriented(), s.oriented())
    back = run(SignFlip, f)
    assert not back.higher_is_better and np.array_equal(back.values, s.values)


def test_robust_zscore_ignores_one_outlier():
    x = RNG.normal(size=101)
    base = run(RobustZScore, vec(x)).values
    x2 = x.copy()
    x2[np.argmax(x)] = 1e6
    moved = run(RobustZScore, vec(x2)).values
    keep = np.arange(101) != np.argmax(x)
    np.testing.assert_allclose(moved[keep], base[keep])
    assert abs(np.median(base)) < 1e-12
    mostly_zero = run(RobustZScore, vec([0, 0, 0, 0, 0, 1, 2])).values  # MAD = 0: mean-AD fallback
    assert np.all(np.isfinite(mostly_zero)) and mostly_zero[6] > mostly_zero[5] > 0


def test_instance_zscore_columns_and_affine_invariance():
    a = RNG.normal(size=(500, 6)) * [10, 10, 1, 1, 0.3, 0.3] + RNG.normal(size=6)
    z = run(InstanceZScore, mat(a, tasks=["a", "a", "b", "b", "c", "c"]))
    np.testing.assert_allclose(z.values.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.values.std(0), 1, atol=1e-9)
    rescaled = a * RNG.uniform(0.1, 10, size=6) + RNG.normal(size=6) * 100
    np.testing.assert_allclose(run(InstanceZScore, mat(rescaled)).values, z.values, atol=1e-8)
    np.testing.assert_allclose(run(ZScore, mat(a)).values, z.values, atol=1e-12)
    assert z.tasks == ("a", "a", "b", "b", "c", "c") and z.shape is Shape.MATRIX
    f32 = run(InstanceZScore, Score(values=a.astype(np.float32), shape=Shape.MATRIX, tasks=("t",) * 6))
    assert f32.values.dtype == np.float32
    with pytest.raises(DataError):
        run(InstanceZScore, mat(np.where(a > 2, np.nan, a)), nan="raise")


def test_column_moments_merge_like_one_pass():
    a = RNG.normal(5, 3, size=(1000, 3))
    parts = [ColumnMoments.of(c) for c in np.array_split(a, [1, 10, 400])]
    merged = ColumnMoments.empty(3)
    for part in parts:
        merged = merged.merge(part)
    np.testing.assert_allclose(merged.mean, a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.std(), a.std(0), rtol=1e-12)


def _features(n=300, m=80, d=6):
    mix = RNG.normal(size=(d, d)) * [1, 1, 1, 1, 1, 30]
    return RNG.normal(size=(n, d)) @ mix + 2, {"a": RNG.normal(size=(m, d)) @ mix, "b": RNG.normal(size=(20, d)) @ mix}


def test_whiten_pooled_covariance_is_identity():
    pool, targets = _features()
    out = run(Whiten, Score(values=pool, shape=Shape.FEATURES, target_features=targets), l2_normalize=False, ridge=0)
    rows = np.vstack([out.values, *out.target_features.values()])
    np.testing.assert_allclose(rows.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(rows.T @ rows / len(rows), np.eye(6), atol=1e-8)
    assert set(out.target_features) == {"a", "b"} and out.values.dtype == np.float64


def test_whiten_cholesky_and_zca_give_the_same_geometry():
    pool, targets = _features()
    score = Score(values=pool, shape=Shape.FEATURES, target_features=targets)
    for l2 in (True, False):
        chol = run(Whiten, score, method="cholesky", l2_normalize=l2)
        zca = run(Whiten, score, method="zca", l2_normalize=l2)
        for a, b in ((chol.values, zca.values), (chol.target_features["a"], zca.target_features["a"])):
            np.testing.assert_allclose(a @ chol.values.T, b @ zca.values.T, atol=1e-10)
            dist = lambda u, v: np.linalg.norm(u[:, None] - v[None], axis=2)  # noqa: E731
            np.testing.assert_allclose(dist(a, chol.values[:30]), dist(b, zca.values[:30]), atol=1e-10)
        assert not np.allclose(chol.values, zca.values)  # coordinates differ, geometry does not
        if l2:
            np.testing.assert_allclose(np.linalg.norm(chol.values, axis=1), 1)


def test_whiten_checks_shapes():
    with pytest.raises(DataError, match="target 'a'"):
        run(Whiten, Score(values=np.ones((5, 3)), shape=Shape.FEATURES, target_features={"a": np.ones((2, 4))}))
    assert Whiten.accepts == frozenset({Shape.FEATURES})


def test_softmax_sums_to_one_and_temperature_limits():
    x = RNG.normal(size=50)
    p = run(Softmax, vec(x)).values
    assert abs(p.sum() - 1) < 1e-12 and np.argmax(p) == np.argmax(x)
    assert run(Softmax, vec(x), temperature=1e-6).values[np.argmax(x)] > 1 - 1e-9
    np.testing.assert_allclose(run(Softmax, vec(x), temperature=1e9).values, 1 / 50, rtol=1e-6)
    np.testing.assert_allclose(np.exp(run(Softmax, vec(x), output="log_prob").values), p)
    groups = np.repeat(["a", "b", "c"], [10, 15, 25])
    pg = run(Softmax, vec(x), norm_ctx(50, cluster=groups), group_by="cluster").values
    for g in "abc":
        assert abs(pg[groups == g].sum() - 1) < 1e-12
    pm = run(Softmax, mat(RNG.normal(size=(40, 3)) * 1000)).values  # large logits: no overflow
    np.testing.assert_allclose(pm.sum(0), 1)
    pn = run(Softmax, vec([1.0, np.nan, 2.0])).values
    assert np.isnan(pn[1]) and abs(np.nansum(pn) - 1) < 1e-12


def test_log_is_monotone_and_refuses_nonpositive():
    x = RNG.uniform(0.1, 10, size=30)
    np.testing.assert_allclose(run(Log, vec(x)).values, np.log(x))
    assert np.isfinite(run(Log, vec([0.0, 1.0]), eps=1e-12).values).all()
    with pytest.raises(DataError, match="x \\+ eps <= 0"):
        run(Log, vec([-1.0, 1.0]))


def test_every_normalizer_is_registered_with_strict_params():
    from selectkit.contract.registry import load_registry

    registry = load_registry()
    for name in ("zscore", "minmax", "rank", "clip", "sign_flip", "robust_zscore", "instance_zscore", "whiten",
                 "softmax", "log"):
        cls = registry.get("normalizers", name)
        assert cls.Params.model_config.get("extra") == "forbid"
