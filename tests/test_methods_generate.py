"""pass_rate on the demo LM: sampled completions (the `generate` provider) checked by a verifier.
The demo LM knows its training statements' spelling, not arithmetic: a prompt that stops inside a
word is easy (the model completes the word), one that stops before the next word is hard."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from model_fixtures import DEMO_DATA, TINY_LM

from selectkit.data.sources import Dataset
from selectkit.recipe.spec import ModelSpec
from selectkit.testing import features, score
from selectkit_plugins.scorers.pass_rate import PassRate

pytest.importorskip("torch")

DEMO = ModelSpec(path=str(TINY_LM), kind="causal-lm", max_length=256)


def _pool(n: int) -> tuple[Dataset, np.ndarray]:
    prompts, answers, easy = [], [], []
    for line in (DEMO_DATA / "target_politics.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        m = next((m for m in re.finditer(r"\b[a-z]{7,}\b", text) if 15 < m.start() < 150), None)
        if m is None:
            continue
        prompts += [text[:m.start() + 4], text[:m.start()]]  # inside the word / before it
        answers += [text[m.start() + 4:m.start() + 6], text[m.start():m.end()]]  # 2 more letters / the word
        easy += [True, False]
        if len(prompts) == 2 * n:
            break
    rows = pl.DataFrame({"prompt": prompts, "answer": answers})
    ds = Dataset(name="pool", rows=rows, ids=pl.Series("id", [f"p{i}" for i in range(len(prompts))]),
                 texts=prompts, fingerprint="")
    return ds, np.array(easy)


def test_pass_rate_scores_prompts_the_model_cannot_complete_higher(tmp_path):
    pool, easy = _pool(10)
    params = dict(prompt="{prompt}", answer="answer", verifier={"use": "regex", "with": {"pattern": "^{answer}"}},
                  samples=4, max_new_tokens=4, temperature=0.5)
    hardness = score(PassRate(PassRate.Params(**params)), pool, model=DEMO, cache_dir=tmp_path).values
    assert np.isfinite(hardness).all() and ((hardness >= 0) & (hardness <= 1)).all()
    # at the time of writing: mean 0.525 for the easy prompts, 1.0 (never solved) for the hard ones
    assert hardness[easy].mean() + 0.3 <= hardness[~easy].mean(), (hardness[easy], hardness[~easy])
    banded = score(PassRate(PassRate.Params(**params, pass_band=(0.25, 0.75))), pool, model=DEMO,
                   cache_dir=tmp_path).values
    rate = 1 - hardness
    np.testing.assert_array_equal(np.isnan(banded), (rate < 0.25) | (rate > 0.75))


def test_completions_do_not_depend_on_batching(tmp_path):
    from selectkit.contract.components import FeatureRequest

    pool, _ = _pool(3)
    request = FeatureRequest("completions", "pool", tuple(sorted(
        {"prompt": "{prompt}", "samples": 3, "max_new_tokens": 5, "temperature": 1.0}.items())))
    a = features([request], pool, model=DEMO, cache_dir=tmp_path / "a").get("completions", "pool",
                                                                          **dict(request.settings))
    b_store = features([request], pool, model=DEMO, cache_dir=tmp_path / "b", seed=0, options={"batch_size": 2})
    b = b_store.get("completions", "pool", **dict(request.settings))
    assert a == b and len(a) == len(pool) and all(len(c) == 3 for c in a)
    assert len({c for cs in a for c in cs}) > 3  # sampled, not greedy copies
    from selectkit.contract.keyed_random import row_keys
    from selectkit_plugins.passes.generate import stream_seeds

    keys = row_keys(pool.ids)
    seeds = stream_seeds(0, "tag", keys, 3)
    assert len(np.unique(seeds)) == seeds.size  # one stream per (row, sample)
    np.testing.assert_array_equal(stream_seeds(0, "tag", keys[::-1], 3), seeds[::-1])  # keyed by row, not place
    assert not np.array_equal(stream_seeds(1, "tag", keys, 3), seeds)
