"""Half-precision weights (`models.<name>.dtype: bfloat16`): every pass runs under autocast, and
what is reduced (losses, log-probs, per-example gradient products) is reduced in float32, so a
bfloat16 run ranks the pool as the float32 run does. Gradient batches sized by the device's
memory estimate (`batch_size: auto`) give the same features as one example at a time."""

from __future__ import annotations

import json
import warnings

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from conftest import cli
from model_fixtures import TINY_LM

from selectkit.models.lm import mixed_precision, weights_dtype
from selectkit_plugins.lib.influence.checkpoints import unfreeze
from selectkit_plugins.lib.influence.hooks import weight_grad
from selectkit_plugins.lib.influence.pipeline import GradientSettings, featurize_texts

torch.set_num_threads(2)
TEXTS = ["reverse: abc -> cba", "add: 12+7 -> 19", "upper: hello there -> HELLO THERE", "x",
         "the committee voted to fund the new bridge over the river", "ok"]


@pytest.fixture(scope="module")
def lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(TINY_LM).eval()
    unfreeze(model, "linear", has_adapter=False)
    return model, AutoTokenizer.from_pretrained(TINY_LM)


def test_half_precision_gradient_products_accumulate_in_float32():
    torch.manual_seed(0)
    a = torch.randn(2, 512, 48).to(torch.bfloat16)
    g = torch.randn(2, 512, 40).to(torch.bfloat16)
    exact = torch.bmm(g.double().transpose(1, 2), a.double()).flatten(1)
    got = weight_grad("linear", a, g)
    assert got.dtype == torch.float32
    rel = lambda x: float((x.double() - exact).abs().max() / exact.abs().max())  # noqa: E731
    assert rel(got) < 1e-6
    assert rel(torch.bmm(g.transpose(1, 2), a).flatten(1)) > 1e-3  # a bfloat16 sum over 512 tokens is not
    assert weight_grad("conv1d", a, g).dtype == torch.float32


def test_bfloat16_weights_run_under_autocast_with_float32_results(lm):
    model, tok = lm
    half = type(model).from_pretrained(TINY_LM, dtype=torch.bfloat16).eval()
    unfreeze(half, "linear", has_adapter=False)
    assert weights_dtype(half) == torch.bfloat16 and weights_dtype(model) == torch.float32
    with mixed_precision(half):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with mixed_precision(model):
        assert not torch.is_autocast_enabled("cpu")
    settings = GradientSettings(proj_dim=256, batch_size=2)
    full = featurize_texts(model, tok, TEXTS, settings)
    got = featurize_texts(half, tok, TEXTS, settings)
    assert got.features.dtype == np.float32 and np.isfinite(got.features).all()
    cos = (got.features * full.features).sum(1) / np.linalg.norm(got.features, axis=1) / np.linalg.norm(
        full.features, axis=1)
    assert cos.min() > 0.98, cos
    np.testing.assert_allclose(got.losses, full.losses, rtol=2e-2)
    np.testing.assert_allclose(got.norms, full.norms, rtol=5e-2)


def test_auto_gradient_batches_fit_the_budget_and_do_not_change_features(lm):
    from selectkit.models.loader import LoadedModel
    from selectkit.recipe.spec import ModelSpec
    from selectkit_plugins.passes.forward import GRADIENT_ROWS_CPU, gradient_batches

    model, tok = lm
    loaded = LoadedModel(spec=ModelSpec(path=str(TINY_LM), kind="causal-lm", max_length=256), model=model,
                         tokenizer=tok, device="cpu", max_length=256)
    tokens, rows = gradient_batches(loaded, raw_dim=10_000)
    assert tokens >= 256 and 1 <= rows <= GRADIENT_ROWS_CPU
    assert gradient_batches(loaded, raw_dim=10 ** 9)[1] == 1  # a huge raw gradient: one example at a time
    one = featurize_texts(model, tok, TEXTS, GradientSettings(proj_dim=128, batch_size=1))
    # tight budget: batches of mixed sizes (2 rows of the longest, more of the short ones)
    auto = featurize_texts(model, tok, TEXTS, GradientSettings(proj_dim=128, batch_size=0, batch_tokens=80,
                                                               max_rows=4))
    np.testing.assert_allclose(auto.features, one.features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(auto.losses, one.losses, rtol=1e-5)


def test_lora_warmup_on_bfloat16_weights_trains_float32_adapters(lm):
    from selectkit.recipe.spec import WarmupSpec
    from selectkit_plugins.lib.influence.warmup import Warmup

    _, tok = lm
    base = type(lm[0]).from_pretrained(TINY_LM, dtype=torch.bfloat16)
    spec = WarmupSpec(fraction=1.0, epochs=1, learning_rate=1e-2, batch_size=4, micro_batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warm = Warmup(base, tok, TEXTS * 2, spec, seed=0, max_length=64, target_modules=["q_proj", "v_proj"])
        before = {n: p.detach().clone() for n, p in warm.named}
        info = warm.train_epoch(0)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]  # peft's deprecation is not ours
    assert np.isfinite(info["loss"])
    assert all(p.dtype == torch.float32 for _, p in warm.named)
    assert any(not torch.equal(before[n], p) for n, p in warm.named if "lora_A" in n)


def test_a_bfloat16_recipe_ranks_the_pool_as_float32_does(demo):
    """The CLI, end to end: the demo perplexity recipe with its LM in bfloat16."""
    recipe = yaml.safe_load((demo / "perplexity_filter.yaml").read_text())
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        recipe["models"]["lm"]["dtype"] = dtype
        recipe["output"]["dir"] = f"out-{dtype}"
        path = demo / f"ppl-{dtype}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        done = cli("run", path, "--limit", "200", "-q")
        assert done.returncode == 0, done.stderr
        outputs[dtype] = pl.read_parquet(demo / f"out-{dtype}" / "selection.parquet")
    full, half = outputs["float32"]["score.ppl"].to_numpy(), outputs["bfloat16"]["score.ppl"].to_numpy()
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert np.corrcoef(rank(full), rank(half))[0, 1] > 0.99
    np.testing.assert_allclose(half, full, rtol=3e-2)
    assert not np.array_equal(half, full)  # it did run in bfloat16
    overlap = np.mean(outputs["float32"]["selected"].to_numpy() == outputs["bfloat16"]["selected"].to_numpy())
    assert overlap > 0.95
    manifest = json.loads((demo / "out-bfloat16" / "manifest.json").read_text())
    assert manifest["models"]["lm"]["dtype"] == "bfloat16"
