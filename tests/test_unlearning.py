"""UnTrac / UnTrac-Inv and the group selector on a toy with leave-one-source-out (LDO) ground truth.

Setup: four training sources and a target drawn like the first one.
Each text is one letter pair "x>y" over a 12-letter alphabet: `same` maps y = x+1 (the target's task),
`upper` does the same on upper-case letters (input-shifted), `noise` has random y, `flip` maps y = x+5
(label-flipped). A tiny byte-level Llama is trained on all four, and once more without each source; the
target-loss rise when a source is left out is the true influence (same >> upper ~ 0 > noise, flip < 0).
Small SGD steps keep gradient ascent in its first-order regime, where it tracks LDO (Adam-like steps
amplify tiny shared gradients and flip the sign of the weak sources on this toy).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from model_fixtures import dataset  # noqa: E402

from selectkit.contract.components import Score, ScoreContext, SelectContext, Shape  # noqa: E402
from selectkit.recipe.spec import ModelSpec  # noqa: E402
from selectkit.testing import run_scorer  # noqa: E402
from selectkit_plugins.passes.unlearn import (  # noqa: E402
    _encode,
    _token_nll,
    example_losses,
    untrac_groups,
    untrac_inv,
)
from selectkit_plugins.scorers.unlearning import UnlearningGroup, UnlearningInv  # noqa: E402
from selectkit_plugins.selectors.unlearning import Unlearning  # noqa: E402

LETTERS = "abcdefghijkl"
NAMES = ("same", "upper", "noise", "flip")
PER_SOURCE = 24
ASCENT = {"optimizer": "sgd", "lr": 3e-4, "steps": 4, "eval_every": 1}


def rho(a, b) -> float:
    """Spearman correlation, rounded so one adjacent swap of four (exactly 0.8) passes `>= 0.8`."""
    return round(float(spearmanr(a, b).statistic), 9)


def letter_pairs(rng, alphabet, shift):
    xs = np.arange(PER_SOURCE) % len(alphabet)
    ys = rng.integers(len(alphabet), size=PER_SOURCE) if shift is None else (xs + shift) % len(alphabet)
    return [f"{alphabet[x]}>{alphabet[y]}" for x, y in zip(xs, ys)]


def train(tok, texts, steps=100, seed=0):
    """Full-batch Adam with linear decay: converges on this toy, so LDO retraining is stable."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=None, eos_token_id=1, pad_token_id=0)
    model = LlamaForCausalLM(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    enc = _encode(tok, texts, 64, "cpu")
    for _ in range(steps):
        loss = _token_nll(model, enc).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from transformers import ByT5Tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a shared machine
    try:
        rng = np.random.default_rng(0)
        sources = {"same": letter_pairs(rng, LETTERS, 1), "upper": letter_pairs(rng, LETTERS.upper(), 1),
                   "noise": letter_pairs(rng, LETTERS, None), "flip": letter_pairs(rng, LETTERS, 5)}
        target = letter_pairs(rng, LETTERS, 1)
        tok = ByT5Tokenizer()
        model = train(tok, [t for s in NAMES for t in sources[s]])
        base = example_losses(model, tok, target).mean()
        ldo = np.array([example_losses(train(tok, [t for s in NAMES if s != left for t in sources[s]]), tok,
                                       target).mean() - base for left in NAMES])
        folder = tmp_path_factory.mktemp("toy-lm")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        yield {"model": model, "tok": tok, "sources": sources, "target": target, "ldo": ldo, "folder": folder}
    finally:
        torch.set_num_threads(threads)


def test_toy_ground_truth_is_as_designed(toy):
    ldo = dict(zip(NAMES, toy["ldo"]))
    assert ldo["same"] > 0.5 and ldo["noise"] < 0 and ldo["flip"] < 0 and abs(ldo["upper"]) < 0.2


def test_untrac_matches_leave_one_source_out(toy):
    groups = [toy["sources"][s] for s in NAMES]
    rngs = [np.random.default_rng(i) for i in range(len(NAMES))]
    scores = untrac_groups(toy["model"], toy["tok"], groups, toy["target"], rngs, batch_size=16, **ASCENT)
    assert rho(scores, toy["ldo"]) >= 0.8
    assert scores[0] > 0 > scores[3]  # sign test: same task helps, label-flipped hurts


def test_untrac_inv_matches_leave_one_source_out(toy):
    pool = [t for s in NAMES for t in toy["sources"][s]]
    per_example = untrac_inv(toy["model"], toy["tok"], pool, toy["target"], np.random.default_rng(0),
                             batch_size=PER_SOURCE, **ASCENT)
    per_source = per_example.reshape(len(NAMES), PER_SOURCE).mean(axis=1)
    assert rho(per_source, toy["ldo"]) >= 0.8
    assert per_source[0] > 0 > per_source[3]


def test_untrac_grows_with_unlearning_steps_for_the_helpful_source(toy):
    def after(steps):
        return untrac_groups(toy["model"], toy["tok"], [toy["sources"]["same"]], toy["target"],
                             [np.random.default_rng(0)], aggregate="last", batch_size=16,
                             **{**ASCENT, "steps": steps})[0]

    assert 0 < after(1) < after(2) < after(4)


def test_untrac_restores_the_model(toy):
    before = [p.detach().clone() for p in toy["model"].parameters()]
    untrac_inv(toy["model"], toy["tok"], toy["sources"]["same"][:4], toy["target"], np.random.default_rng(0),
               batch_size=8, **ASCENT)
    assert all(torch.equal(a, b) for a, b in zip(before, toy["model"].parameters()))


# ---------------------------------------------------------------- components on a saved model


def contexts(toy, targets=("t",)):
    texts = [t for s in NAMES for t in toy["sources"][s]]
    pool = dataset("pool", texts, source=[s for s in NAMES for _ in range(PER_SOURCE)])
    spec = ModelSpec(path=str(toy["folder"]), kind="causal-lm", device="cpu")
    half = len(toy["target"]) // 2
    parts = {"t": toy["target"]} if targets == ("t",) else {"t": toy["target"][:half], "u": toy["target"][half:]}
    return pool, ScoreContext(pool=pool, targets={k: dataset(k, v) for k, v in parts.items()}, seed=0, model=spec)


def test_group_scorer_and_selector_keep_the_helpful_source(toy):
    pool, sctx = contexts(toy)
    scorer = UnlearningGroup(UnlearningGroup.Params(group_by="source", batch_size=16, **ASCENT))
    score = run_scorer(scorer, sctx)
    assert score.shape is Shape.VECTOR and score.values.shape == (len(pool),)
    per_source = score.values.reshape(len(NAMES), PER_SOURCE)
    assert (per_source == per_source[:, :1]).all()  # every example carries its group's score
    assert rho(per_source[:, 0], toy["ldo"]) >= 0.8
    np.testing.assert_array_equal(score.values, run_scorer(scorer, sctx).values)  # reproducible

    def select(**params):
        ctx = SelectContext(candidates=np.arange(len(pool)), pool=pool, seed=0, stage="unlearn", score=score,
                            scores={"u": score})
        return Unlearning(Unlearning.Params(score="u", **params)).run(ctx)

    same = set(range(PER_SOURCE))
    assert set(select(budget=PER_SOURCE).indices.tolist()) == same
    filled = select(budget=PER_SOURCE + 6).indices
    assert set(filled[:PER_SOURCE].tolist()) == same and len(filled) == PER_SOURCE + 6
    assert set(select(budget=PER_SOURCE + 6, last_group="stop").indices.tolist()) == same
    by_column = select(budget=PER_SOURCE, group_by="source").indices
    assert set(by_column.tolist()) == same
    assert len(select(budget=90, min_score=0.0).indices) < 90  # the harmful sources never enter


def test_group_scorer_needs_one_grouping():
    for bad in ({}, {"group_by": "source", "clusters": 3}):
        with pytest.raises(ValueError, match="exactly one"):
            UnlearningGroup.Params(**bad)


def test_group_scorer_with_clusters_runs(toy):
    _, sctx = contexts(toy)
    params = UnlearningGroup.Params(clusters=2, batch_size=8, **{**ASCENT, "steps": 1})
    values = run_scorer(UnlearningGroup(params), sctx).values
    assert 1 <= len(np.unique(values)) <= 2


def test_inv_scorer_vector_and_per_target_matrix(toy):
    pool, sctx = contexts(toy, targets=("t", "u"))
    vec = run_scorer(UnlearningInv(UnlearningInv.Params(batch_size=PER_SOURCE, grad_accum=1, **ASCENT)), sctx)
    assert vec.shape is Shape.VECTOR and vec.values.shape == (len(pool),)
    assert rho(vec.values.reshape(len(NAMES), -1).mean(1), toy["ldo"]) >= 0.8
    inv = UnlearningInv(UnlearningInv.Params(batch_size=12, grad_accum=1, per_target=True, **ASCENT))
    assert inv.output_shape() is Shape.MATRIX
    mat = run_scorer(inv, sctx)
    assert isinstance(mat, Score) and mat.values.shape == (len(pool), 2) and mat.tasks == ("t", "u")
