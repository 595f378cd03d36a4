"""Influence scoring math against closed forms (spec section 9: T10-T13), no model needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selectkit_plugins.lib.influence import scores
from selectkit_plugins.lib.influence.adam import AdamState, adam_transform
from selectkit_plugins.lib.influence.hessian import conjugate_gradient, inverse_hessian_scores, lissa

torch.set_num_threads(2)


def test_adam_feature_is_less_reference_formula():
    rng = np.random.default_rng(0)
    g, m, v = rng.normal(size=(4, 50)), rng.normal(size=50) * 0.1, rng.random(50) * 0.01
    state = AdamState(torch.tensor(m), torch.tensor(v))
    got = adam_transform(torch.tensor(g), state).numpy()
    expected = (0.9 * m + 0.1 * g) / np.sqrt(0.999 * v + 0.001 * g**2 + 1e-8)  # eps inside sqrt, no bias correction
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_adam_feature_with_zero_state_is_scaled_sign():
    g = torch.tensor([[0.3, -2.0, 0.1, -0.05]], dtype=torch.float64)  # |g| >> sqrt(eps / 0.001)
    got = adam_transform(g, AdamState.zeros(4))
    np.testing.assert_allclose(got.numpy(), 0.1 / np.sqrt(0.001) * np.sign(g.numpy()), rtol=3e-3)


def test_adam_paper_mode_bias_corrects_with_eps_outside():
    rng = np.random.default_rng(1)
    g, m, v = rng.normal(size=(2, 10)), rng.normal(size=10), rng.random(10)
    state = AdamState(torch.tensor(m), torch.tensor(v), step=9)
    got = adam_transform(torch.tensor(g), state, mode="paper").numpy()
    m1, v1 = (0.9 * m + 0.1 * g) / (1 - 0.9**10), (0.999 * v + 0.001 * g**2) / (1 - 0.999**10)
    np.testing.assert_allclose(got, m1 / (np.sqrt(v1) + 1e-8), rtol=1e-12)


def test_tracin_is_lr_weighted_dot_products():
    rng = np.random.default_rng(0)
    tr, te = [rng.normal(size=(7, 5)) for _ in range(2)], [rng.normal(size=(3, 5)) for _ in range(2)]
    got = scores.tracin(tr, te, [0.5, 2.0])
    np.testing.assert_allclose(got, 0.5 * tr[0] @ te[0].T + 2.0 * tr[1] @ te[1].T)


def test_less_is_weighted_cosine_and_aggregates_like_matching_py():
    rng = np.random.default_rng(0)
    tr, te = [rng.normal(size=(6, 4)) * 10 for _ in range(2)], [rng.normal(size=(4, 4)) for _ in range(2)]
    lrs = [3e-5, 1e-5]
    s = scores.less(tr, te, lrs)
    w = np.array(lrs) / sum(lrs)
    cos = [scores.unit_rows(a) @ scores.unit_rows(b).T for a, b in zip(tr, te)]
    np.testing.assert_allclose(s, w[0] * cos[0] + w[1] * cos[1])
    np.testing.assert_allclose(np.linalg.norm(scores.unit_rows(tr[0]), axis=1), 1.0)
    assert np.all(np.abs(s) <= 1 + 1e-12)
    # LESS: mean within each subtask, then max over subtasks (matching.py's reshape(N, K, -1).mean(-1).max(-1))
    subtasks = ["a", "a", "b", "b"]
    np.testing.assert_allclose(scores.less_task_scores(s, subtasks), s.reshape(6, 2, 2).mean(-1).max(-1))
    assert list(scores.top_fraction(np.array([0.1, 0.5, 0.3, 0.9, 0.2]), 0.4)) == [3, 1]  # int(0.4 * 5) = 2


def test_checkpoint_weights_reject_bad_rates():
    from selectkit.errors import SelectkitError

    with pytest.raises(SelectkitError, match="positive sum"):
        scores.checkpoint_weights([0.0, 0.0])


def test_the_warmup_schedule_is_transformers_and_a_one_step_run_trains():
    import torch
    from transformers import get_linear_schedule_with_warmup

    from selectkit.models.training import linear_schedule

    for total, warm in ((100, 3), (10, 1), (7, 0)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        hf = get_linear_schedule_with_warmup(opt, warm, total)
        ours = linear_schedule(total, warm)
        for step in range(total):
            assert ours(step) == pytest.approx(hf.get_last_lr()[0])
            opt.step()
            hf.step()
    # a 5-example warmup in batches of 8 is one step: ceil(0.03 * 1) = 1 warmup step would give it rate 0
    assert linear_schedule(1, 1)(0) == 1.0


def _sherman_morrison_sum(g, v, lam):
    n, d = g.shape
    total = np.zeros(d)
    for gi in g:
        total += np.linalg.solve(np.outer(gi, gi) + lam * np.eye(d), v)
    return total / n


def test_datainf_equals_explicit_sherman_morrison_sum():
    rng = np.random.default_rng(0)
    g, v, k = rng.normal(size=(30, 50)), rng.normal(size=(2, 50)), rng.normal(size=(5, 50))
    lam = 1e-3
    got = scores.datainf(np.vstack([g, k]), v, damping=lam)  # n = 35 rows define the curvature
    g_all = np.vstack([g, k])
    hvp = np.stack([_sherman_morrison_sum(g_all, vi, lam) for vi in v])
    np.testing.assert_allclose(got, g_all @ hvp.T, atol=1e-6 * np.abs(got).max())


def test_datainf_is_exact_for_one_example_and_identity_for_large_damping():
    rng = np.random.default_rng(1)
    g, v = rng.normal(size=(1, 8)), rng.normal(size=(1, 8))
    lam = 0.3
    exact = g @ np.linalg.solve(np.outer(g[0], g[0]) + lam * np.eye(8), v.T)
    np.testing.assert_allclose(scores.datainf(g, v, damping=lam), exact, rtol=1e-10)
    big = 1e8
    g2 = rng.normal(size=(20, 8))
    np.testing.assert_allclose(scores.datainf(g2, v, damping=big) * big, g2 @ v.T, rtol=1e-5)


def test_datainf_default_damping_and_blocks():
    rng = np.random.default_rng(2)
    g, v = rng.normal(size=(10, 6)), rng.normal(size=(3, 6))
    lam_a = 0.1 * np.mean(np.mean(g[:, :2] ** 2, axis=1))
    lam_b = 0.1 * np.mean(np.mean(g[:, 2:] ** 2, axis=1))
    got = scores.datainf(g, v, [(0, 2), (2, 6)])
    expected = scores.datainf(g[:, :2], v[:, :2], damping=lam_a) + scores.datainf(g[:, 2:], v[:, 2:], damping=lam_b)
    np.testing.assert_allclose(got, expected)
    with pytest.raises(ValueError, match="positive"):
        scores.datainf(g, v, damping=0.0)


def test_self_influence_and_grand():
    norms = [np.array([1.0, 2.0]), np.array([3.0, 0.5])]
    np.testing.assert_allclose(scores.self_influence(norms, [0.1, 0.2]), [0.1 + 0.2 * 9, 0.4 + 0.2 * 0.25])
    np.testing.assert_allclose(scores.grand(norms), [2.0, 1.25])


def test_inverse_hessian_self_scores_are_the_pairwise_diagonal_and_solvers_agree():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20))
    h = a @ a.T / 20
    g = rng.normal(size=(9, 20))
    pair = inverse_hessian_scores(g, g, h, damping=0.1)
    self_scores = np.einsum("ij,ji->i", g, np.linalg.solve(h + 0.1 * np.eye(20), g.T))
    np.testing.assert_allclose(np.diag(pair), self_scores)
    ht = torch.tensor(h)
    b = torch.tensor(g[0])
    exact = np.linalg.solve(h + 0.1 * np.eye(20), g[0])
    x, info = conjugate_gradient(lambda v: ht @ v, b, damping=0.1, tol=1e-12, max_iter=200)
    assert info["converged"]
    np.testing.assert_allclose(x.numpy(), exact, rtol=1e-8)
    scale = float(np.linalg.eigvalsh(h).max()) + 1.0
    y = lissa(lambda v: ht @ v, b, damping=0.1, scale=scale, depth=3000)
    np.testing.assert_allclose(y.numpy(), exact, rtol=1e-4)


def test_cg_reports_negative_curvature():
    h = torch.diag(torch.tensor([1.0, -2.0], dtype=torch.float64))
    _, info = conjugate_gradient(lambda v: h @ v, torch.tensor([1.0, 1.0], dtype=torch.float64), damping=0.0)
    assert info["negative_curvature"]


def test_explicit_hessian_of_logistic_regression_matches_the_closed_form():
    import influence_reference as ref

    from selectkit_plugins.lib.influence.hessian import explicit_hessian

    x, y, _, _ = ref.load_split("wine", 60)
    model = ref.fit(x, y, 2.0)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def objective(theta):
        logits = xt @ theta.view(model.classes, -1).T
        return torch.nn.functional.cross_entropy(logits, yt, reduction="sum") + 1.0 * theta.pow(2).sum()

    h = explicit_hessian(objective, torch.tensor(model.w.ravel()))
    np.testing.assert_allclose(h.numpy(), model.hessian(x), rtol=1e-8, atol=1e-10)
