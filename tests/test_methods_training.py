"""Issue 14's methods over training runs: EL2N / GraNd averaged over seeded runs with `drop_top`,
and learning percentage, on a tiny random LM trained by the planned `train` provider."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import dataset, tiny_causal_lm

from selectkit.recipe.spec import ModelSpec, WarmupSpec
from selectkit.testing import features, score
from selectkit_plugins.scorers._model import drop_top
from selectkit_plugins.scorers.el2n import EL2N
from selectkit_plugins.scorers.learning_percentage import LearningPercentage, learning_percentage
from selectkit_plugins.scorers.self_influence import GraNd

pytest.importorskip("torch")

TEXTS = ["the cat sat on the mat", "the cat sat on the hat", "the dog sat on the log", "a b c d e f g",
         "zq xv jk wp", "the cat sat on the mat again", "stocks fell on monday", "the cat sat"] * 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tiny_causal_lm(tmp_path_factory.mktemp("m") / "lm", hidden=16, layers=1)
    warmup = WarmupSpec(fraction=1.0, epochs=2, learning_rate=5e-2, batch_size=8, micro_batch_size=8, seed=0)
    return ModelSpec(path=str(folder), kind="causal-lm", max_length=32, device="cpu", warmup=warmup)


def test_drop_top_by_hand():
    values = np.array([0.5, 0.9, np.nan, 0.1, 0.9, 0.7])
    keys = np.array([5, 4, 3, 2, 1, 0], dtype=np.uint64)
    # 5 scored values, 40 %: the two highest become NaN; the tie at 0.9 is broken by row key
    np.testing.assert_array_equal(drop_top(values, 0.4, keys), [0.5, np.nan, np.nan, 0.1, np.nan, 0.7])
    np.testing.assert_array_equal(drop_top(values, 0.2, keys), [0.5, 0.9, np.nan, 0.1, np.nan, 0.7])
    np.testing.assert_array_equal(drop_top(values, 0.0, keys), values)


def test_el2n_over_runs_is_the_mean_of_each_runs_last_checkpoint(tmp_path, trained):
    from selectkit_plugins.scorers.el2n import trajectory_requests

    pool = dataset("pool", TEXTS)
    requests = trajectory_requests(2, None)
    got = features(requests, pool, model=trained, cache_dir=tmp_path)
    runs = [got.get(r.kind, r.data, **dict(r.settings)) for r in requests]
    last = [np.asarray(r["el2n"][-1]) for r in runs]
    assert runs[0]["names"] == ["epoch-2"] or len(runs[0]["names"]) == 1
    assert not np.allclose(last[0], last[1])  # run 2 is a training of its own (its own seed)
    averaged = score(EL2N(EL2N.Params(runs=2)), pool, model=trained, cache_dir=tmp_path).values
    np.testing.assert_allclose(averaged, (last[0] + last[1]) / 2)
    pruned = score(EL2N(EL2N.Params(runs=2, drop_top=0.25)), pool, model=trained, cache_dir=tmp_path).values
    assert np.isnan(pruned).sum() == 4 and np.nanmax(pruned) <= np.sort(averaged)[-5] + 1e-12
    # one run without `runs` reads the model as given: the single forward pass over the pool
    single = score(EL2N(), pool, model=trained.model_copy(update={"warmup": None}), cache_dir=tmp_path).values
    assert single.shape == (len(TEXTS),) and np.isfinite(single).all()


def test_learning_percentage_by_hand():
    # rows: before training, after epoch 1, after epoch 2 (= n); columns: examples
    p = np.array([[10.0, 10.0, 8.0, 5.0], [8.0, 10.0, 6.0, 4.0], [7.0, 5.0, 4.0, 5.0]])
    np.testing.assert_allclose(learning_percentage(p, "exact"), [2 / 3, 0.0, 0.5, np.nan])  # P0 = Pn: NaN
    np.testing.assert_allclose(learning_percentage(p, "approx"), [0.2, 0.0, 0.25, 0.2])


def test_learning_percentage_reads_the_planned_warmups_loss_curve(tmp_path, trained):
    """LP is the formula over the perplexities the trajectory provider reads at the planned
    warmup's checkpoints, the base model's (before training) first."""
    pool = dataset("pool", TEXTS)
    got = features([LearningPercentage().request()], pool, model=trained, cache_dir=tmp_path)
    curve = got.get("checkpoint_losses", "pool")
    assert curve["names"][0] == "before" and np.asarray(curve["loss"]).shape == (3, len(TEXTS))
    lp = score(LearningPercentage(), pool, model=trained, cache_dir=tmp_path).values
    np.testing.assert_allclose(lp, learning_percentage(np.exp(np.asarray(curve["loss"], np.float64))))
    assert np.isfinite(lp).all()
    approx = score(LearningPercentage(LearningPercentage.Params(variant="approx")), pool, model=trained,
                   cache_dir=tmp_path).values
    assert (approx < 1).all()


@pytest.mark.slow
def test_grand_over_runs_and_drop_top(tmp_path, trained):
    pool = dataset("pool", TEXTS[:8])
    base = {}
    one = score(GraNd(GraNd.Params(**base)), pool, model=trained, cache_dir=tmp_path).values
    two = score(GraNd(GraNd.Params(runs=2, **base)), pool, model=trained, cache_dir=tmp_path).values
    assert np.isfinite(one).all() and np.isfinite(two).all() and not np.allclose(one, two)
    requests = GraNd(GraNd.Params(runs=2, **base)).feature_requests([])
    assert sorted(str(dict(r.settings).get("run")) for r in requests) == ["1", "None"]
    pruned = score(GraNd(GraNd.Params(runs=2, drop_top=0.25, **base)), pool, model=trained,
                   cache_dir=tmp_path).values
    np.testing.assert_array_equal(np.isnan(pruned), two >= np.sort(two)[-2])
