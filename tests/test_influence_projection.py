"""Random projections: JL fidelity (spec T8, scaled down to p = 10,000), determinism across runs,
processes and shards (T9), and the factorised (LoGra) projection's exactness."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from selectkit.contract.projection import KroneckerProjector, Projector

torch.set_num_threads(2)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors():
    """400 train + 8 query vectors, p = 10,000, with true cosines of std ~0.07 (a shared low-rank part)."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=(20, 10_000))
    z = rng.normal(size=(408, 20))
    return 0.75 * z @ u / np.sqrt(20) + rng.normal(size=(408, 10_000))


@pytest.mark.parametrize(("k", "min_spearman"), [(512, 0.78), (2048, 0.93)])
def test_projection_preserves_cosines_within_the_jl_bound(vectors, k, min_spearman):
    true = _unit(vectors[:400]) @ _unit(vectors[400:]).T
    proj = Projector(vectors.shape[1], k, seed=0)(torch.tensor(vectors)).double().numpy()
    est = _unit(proj[:400]) @ _unit(proj[400:]).T
    expected = np.sqrt(2 / np.pi) * np.sqrt((1 + np.mean(true**2)) / k)  # mean |error| of a JL cosine
    assert abs(np.abs(est - true).mean() / expected - 1) <= 0.2
    rho = np.mean([spearmanr(est[:, j], true[:, j])[0] for j in range(8)])
    assert rho >= min_spearman, rho  # measured 0.834 (512), 0.957 (2048)


def test_inner_products_are_unbiased():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 300))
    proj = Projector(300, 256, seed=3).matrix().numpy()
    assert proj.shape == (300, 256)
    np.testing.assert_allclose(np.mean(proj**2) * 256, 1.0)  # entries +-1/sqrt(k)
    ests = [(x @ Projector(300, 256, seed=s).matrix().numpy()) for s in range(20)]
    mean_dot = np.mean([e[0] @ e[1] for e in ests])
    assert abs(mean_dot - x[0] @ x[1]) < 4 * np.sqrt(2 * 300 * 300 / 256 / 20)


def test_projection_is_bit_identical_across_shards_and_cache_modes():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(37, 3000)), dtype=torch.float32)
    full = Projector(3000, 512, seed=7, block_rows=700)(x)
    shared = Projector(3000, 512, seed=7, block_rows=700)
    for step in (3, 8):
        assert torch.equal(torch.cat([shared(x[i:i + step]) for i in range(0, 37, step)]), full)
    fresh = [Projector(3000, 512, seed=7, block_rows=700)(x[i:i + 16]) for i in range(0, 37, 16)]  # new shards
    assert torch.equal(torch.cat(fresh), full)
    uncached = Projector(3000, 512, seed=7, block_rows=700, cache_bytes=0)
    assert uncached._cache is None
    assert torch.equal(uncached(x), full)
    assert float(full.norm()) > 0  # TRAK #81: never silently zero
    assert not torch.equal(Projector(3000, 512, seed=8, block_rows=700)(x), full)
    assert not torch.equal(Projector(3000, 512, seed=7, label="other", block_rows=700)(x), full)
    gauss = Projector(3000, 512, seed=7, kind="gaussian")(x)
    assert gauss.shape == full.shape and not torch.equal(gauss, full)


def test_projection_is_bit_identical_in_a_fresh_process():
    import hashlib

    code = ("import torch, hashlib; from selectkit.contract.projection import Projector; "
            "x = torch.arange(6000, dtype=torch.float32).reshape(3, 2000).sin(); "
            "print(*[hashlib.sha256(Projector(2000, 64, seed=11, kind=k)(x).numpy().tobytes()).hexdigest() "
            "for k in ('rademacher', 'gaussian')])")
    x = torch.arange(6000, dtype=torch.float32).reshape(3, 2000).sin()
    here = [hashlib.sha256(Projector(2000, 64, seed=11, kind=k)(x).numpy().tobytes()).hexdigest()
            for k in ("rademacher", "gaussian")]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == here


def test_kronecker_projection_equals_projecting_the_full_gradient():
    rng = np.random.default_rng(3)
    a = torch.tensor(rng.normal(size=(4, 6, 40)))
    g = torch.tensor(rng.normal(size=(4, 6, 30)))
    kp = KroneckerProjector(40, 30, 8, 5, seed=1, label="layer")
    got = kp(a, g).double()
    full = torch.einsum("bto,bti->boi", g, a).reshape(4, -1)  # row-major (out, in)
    dense = torch.kron(kp.p_out.matrix(), kp.p_in.matrix())  # (30*40, 5*8)
    np.testing.assert_allclose(got.numpy(), (full @ dense).numpy(), rtol=1e-5, atol=1e-4)
    assert kp.dim_out == 40


def test_bad_dims_raise():
    with pytest.raises(ValueError):
        Projector(0, 4)
    with pytest.raises(ValueError):
        Projector(10, 4)(torch.zeros(2, 11))
