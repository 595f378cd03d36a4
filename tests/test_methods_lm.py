"""Issue 14's forward-pass methods on the demo LM: IFD, Min-K%++ and contamination flags, with
their known answers, and the plan fusing their passes into the model's one forward step."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from conftest import RECIPES
from model_fixtures import DEMO_DATA, TINY_LM

from selectkit.data.sources import Dataset
from selectkit.recipe.spec import ModelSpec
from selectkit.testing import features, score
from selectkit_plugins.passes.forward import feature_request
from selectkit_plugins.scorers.contamination import Contamination, calibrated_threshold
from selectkit_plugins.scorers.ifd import IFD, ifd
from selectkit_plugins.scorers.min_k_prob import MinKProb

DEMO = ModelSpec(path=str(TINY_LM), kind="causal-lm", max_length=256)


def rows_dataset(name: str, texts: list[str], **columns) -> Dataset:
    return Dataset(name=name, rows=pl.DataFrame({"text": texts, **columns}),
                   ids=pl.Series("id", [f"{name}-{i}" for i in range(len(texts))]), texts=texts, fingerprint="")


def test_ifd_by_hand():
    conditioned, alone = np.array([1.0, 3.0, 2.0, np.nan, 1.0]), np.array([2.0, 2.0, 0.0, 1.0, np.nan])
    np.testing.assert_allclose(ifd(conditioned, alone), [0.5, 1.5, np.nan, np.nan, np.nan])
    np.testing.assert_allclose(ifd(conditioned, alone, "perplexity")[:2], np.exp([-1.0, 1.0]))


def test_plan_fuses_ifd_min_k_plus_and_perplexity_into_one_forward_step():
    from selectkit.api import plan

    built = plan(RECIPES / "ifd.yaml")
    passes = [s for s in built.steps if s.kind == "pass"]
    assert len(passes) == 1, [s.label for s in passes]
    described = passes[0].label + " " + " ".join(map(str, passes[0].payload.work.requests))
    assert "token_zscores" in described and "loss" in described
    kinds = sorted((r.kind, tuple(sorted(dict(r.settings)))) for r in passes[0].payload.work.requests)
    assert kinds == [("loss", ("response",)), ("loss", ("text",)), ("token_zscores", ("response",))]


def _word_completions(n: int) -> tuple[list[str], list[str]]:
    """Prompts ending two letters into a long word of a statement the demo LM was trained on, and
    the rest of that word as the response."""
    prompts, answers = [], []
    for line in (DEMO_DATA / "target_politics.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        m = next((m for m in re.finditer(r"\b[a-z]{8,}\b", text) if 15 < m.start() < 150), None)
        if m is not None:
            prompts.append(text[:m.start() + 4])
            answers.append(text[m.start() + 4:m.end()])
        if len(prompts) == n:
            return prompts, answers
    raise AssertionError("not enough statements")


def test_ifd_ranks_responses_the_prompt_does_not_predict_first(tmp_path):
    """Each response (the rest of a word) once after its own prompt (predictable: the word's start)
    and once after an unrelated full line (not predictable): same s(A), so only the conditioning
    differs. Every response scores higher after the unrelated prompt, and IFD's top half is
    mostly the unpredictable rows."""
    n = 16
    prompts, answers = _word_completions(n)
    unrelated = [json.loads(line)["text"][:60] + "\n"
                 for line in (DEMO_DATA / "target_politics.jsonl").read_text().splitlines()[-n:]]
    texts = [q + a for q, a in zip(prompts + unrelated, answers + answers)]
    pool = rows_dataset("pool", texts, answer=answers + answers)
    values = score(IFD(IFD.Params(response="answer")), pool, model=DEMO, cache_dir=tmp_path).values
    predictable, unpredictable = values[:n], values[n:]
    assert np.isfinite(values).all()
    assert (predictable < unpredictable).all(), (predictable, unpredictable)
    assert predictable.mean() < 0.85 < 1.0 < unpredictable.mean() + 0.1
    top = np.argsort(-values, kind="stable")[:n]
    assert (top >= n).mean() >= 0.8  # figure at the time of writing: 0.875
    rank = np.argsort(np.argsort(values))  # AUROC of IFD for "unpredictable"
    auroc = (rank[n:].sum() - n * (n - 1) / 2) / (n * n)
    assert auroc >= 0.9, auroc  # at the time of writing: 0.926 (means 0.79 vs 1.10)


def test_min_k_plus_zscores_match_the_full_distribution_and_short_texts_get_a_value(tmp_path):
    import torch

    from selectkit.models.lm import token_logprobs
    from selectkit.models.loader import load_model

    texts = ["I will win.", "Stocks rallied on Tuesday and the senator said the budget would pass.", "a"]
    pool = rows_dataset("pool", texts)
    z = features([feature_request("token_zscores", "pool")], pool, model=DEMO,
                 cache_dir=tmp_path).get("token_zscores", "pool")
    lm = load_model(DEMO)
    for text, got in zip(texts, z):
        ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(ids).logits[0, :-1].double(), -1)
        p = logp.exp()
        mu = (p * logp).sum(-1)
        sigma = ((p * logp.square()).sum(-1) - mu.square()).sqrt()
        want = ((logp.gather(-1, ids[0, 1:, None])[:, 0] - mu) / sigma).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    plus = score(MinKProb(MinKProb.Params(variant="plus")), pool, model=DEMO, cache_dir=tmp_path).values
    assert np.isfinite(plus).all()  # "a</s>": one token, int(0.2 * 1) = 0 in the reference code
    assert plus[2] == pytest.approx(float(z[2][0]))
    # sigma = 0: a uniform and a one-hot next-token distribution give z = 0, never NaN or inf
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, -float("inf"), -float("inf")], [1.0, 2.0, 3.0]]])
    _, _, zs = token_logprobs(logits, torch.tensor([[0, 1, 0]]), zscores=True)
    np.testing.assert_array_equal(zs[0], [0.0, 0.0])


def test_calibrated_threshold_sets_the_false_positive_rate():
    reference = np.arange(100, dtype=float)
    tau = calibrated_threshold(reference, 0.05)
    assert (reference > tau).mean() <= 0.05 and (reference >= tau).mean() > 0.05


@pytest.mark.parametrize("variant", ["standard", "plus"])
def test_contamination_flags_members_more_than_unseen_text(tmp_path, variant):
    """The demo LM was trained on membership.jsonl's members; the threshold is calibrated on
    unseen_politics.jsonl, so about `fpr` of held-out non-members are flagged and more members."""
    rows = [json.loads(line) for line in (DEMO_DATA / "membership.jsonl").read_text().splitlines()]
    members = [r["text"] for r in rows if r["member"]][:50]
    others = [r["text"] for r in rows if not r["member"]][:50]
    unseen = [json.loads(line)["text"] for line in (DEMO_DATA / "unseen_politics.jsonl").read_text().splitlines()]
    short = ModelSpec(path=str(TINY_LM), kind="causal-lm", max_length=128)
    pool = rows_dataset("pool", members + others)
    scorer = Contamination(Contamination.Params(variant=variant, fpr=0.1))
    flags = score(scorer, pool, targets={"unseen": rows_dataset("unseen", unseen)}, model=short,
                  cache_dir=tmp_path).values
    assert set(np.unique(flags)) <= {0.0, 1.0}
    member_rate, other_rate = flags[:50].mean(), flags[50:].mean()
    assert other_rate <= 0.2, other_rate  # fpr 0.1 on the calibration text; held-out text is alike
    # at the time of writing: 0.18 vs 0.06 (standard), 0.22 vs 0.0 (plus)
    assert member_rate >= other_rate + 0.1, (member_rate, other_rate)


def test_smart_easy_flags_items_the_model_answers_confidently(tmp_path):
    """mcq.jsonl asks for the next word of a statement the demo LM was trained on. Marking a
    distractor as the answer instead can never be 'easy' (the model would have to prefer it with
    p > threshold over the true word it was trained on far more rarely); keep_fraction 1 keeps all."""
    from selectkit_plugins.scorers.smart import ChoicesOnly, Easy

    rows = [json.loads(line) for line in (DEMO_DATA / "mcq.jsonl").read_text().splitlines()][:24]
    n = len(rows)
    data = dict(question=[r["question"] for r in rows] * 2, choices=[r["choices"] for r in rows] * 2,
                answer=[r["answer"] for r in rows] + [(r["answer"] + 1) % len(r["choices"]) for r in rows])
    pool = rows_dataset("pool", data["question"], **{k: v for k, v in data.items() if k != "question"},
                        question=data["question"])
    short = ModelSpec(path=str(TINY_LM), kind="causal-lm", max_length=128)
    easy = score(Easy(Easy.Params(keep_fraction=0.0, threshold=0.5)), pool, model=short, cache_dir=tmp_path).values
    assert set(np.unique(easy)) <= {0.0, 1.0}
    assert easy[:n].mean() >= easy[n:].mean() + 0.2, (easy[:n].mean(), easy[n:].mean())  # now: 0.71 vs 0.125
    assert easy[:n].sum() > 0 and (easy[:n] + easy[n:] <= 1).all()  # one answer per item can be confident
    kept = score(Easy(Easy.Params(keep_fraction=1.0, threshold=0.5)), pool, model=short, cache_dir=tmp_path).values
    assert (kept == 0).all()
    leaks = score(ChoicesOnly(ChoicesOnly.Params(threshold=0.5)), pool, model=short, cache_dir=tmp_path).values
    assert set(np.unique(leaks)) <= {0.0, 1.0} and (leaks[:n] + leaks[n:] <= 1).all()
