"""Per-example gradients and features (spec T13, T14, T10): vectorised paths equal a loop of
single-example backward passes; LoGra features equal projecting the full gradient; features do
not depend on batching or padding; shards resume; Adam state lines up with the gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import tiny_causal_lm

from selectkit_plugins.lib.influence.adam import adam_transform
from selectkit_plugins.lib.influence.checkpoints import Checkpoint, adam_state
from selectkit_plugins.lib.influence.grads import (
    GradientFeaturizer,
    ghost_sq_norm,
    lm_batch,
    lm_loss,
    per_example_grads_loop,
)
from selectkit_plugins.lib.influence.pipeline import GradientSettings, _unmasked_lm_loss, featurize_texts

torch.set_num_threads(2)
TEXTS = ["reverse: abc -> cba", "add: 12+7 -> 19", "upper: hello there -> HELLO THERE", "x"]
PROMPTS = ["reverse: abc -> ", "add: 12+7 -> ", None, None]


@pytest.fixture(scope="module")
def lora_lm(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    folder = tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny", hidden=32)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)  # peft starts B at 0, which zeroes lora_A's gradient
    model.eval()
    return model, ByT5Tokenizer(), folder


def test_prompt_tokens_are_masked(lora_lm):
    _, tok, _ = lora_lm
    batch = lm_batch(tok, TEXTS, PROMPTS)
    assert (batch["labels"][0, :len("reverse: abc -> ")] == -100).all()
    assert (batch["labels"][0, len("reverse: abc -> "):len(TEXTS[0])] >= 0).all()
    assert (batch["labels"][2, :len(TEXTS[2])] >= 0).all()
    assert (batch["labels"][3, 2:] == -100).all() and batch["attention_mask"][3].sum() == 2  # "x" + </s>


def test_hook_and_vmap_gradients_equal_a_loop_of_backward_passes(lora_lm):
    model, tok, _ = lora_lm
    batch = lm_batch(tok, TEXTS, PROMPTS)
    hooks = GradientFeaturizer(model, lm_loss)
    raw, _, losses = hooks.raw(batch)
    loop = per_example_grads_loop(model, lm_loss, batch, hooks.param_names)
    np.testing.assert_allclose(raw.numpy(), loop.numpy(), atol=1e-6)
    assert raw.shape[1] == 2 * 2 * 4 * (32 + 32)  # layers x (q, v) x r (d_in + d_out)
    assert all("lora_" in n for n in hooks.param_names)
    vm = GradientFeaturizer(model, _unmasked_lm_loss, method="vmap")
    assert vm.param_names == hooks.param_names
    np.testing.assert_allclose(vm.raw(batch)[0].numpy(), loop.numpy(), atol=1e-6)
    np.testing.assert_allclose(losses.numpy(), lm_loss(model, batch).detach().numpy(), rtol=1e-6)


def test_linear_layers_with_bias_and_logra_factorisation():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4))

    def loss(forward, batch):
        return torch.nn.functional.cross_entropy(forward(batch["x"]), batch["y"], reduction="none")

    batch = {"x": torch.randn(5, 6), "y": torch.randint(0, 4, (5,))}
    feat = GradientFeaturizer(net, loss)
    loop = per_example_grads_loop(net, loss, batch, feat.param_names)
    np.testing.assert_allclose(feat.raw(batch)[0].numpy(), loop.numpy(), atol=1e-6)
    assert feat.param_names == ["0.weight", "0.bias", "2.weight", "2.bias"]

    logra = GradientFeaturizer(net, loss, proj_dim=8, factorize_above=40, factor_dim=3)  # 1st layer: 63 entries
    assert [b.factorized for b in logra.blocks] == [True, False]
    out = logra(batch)
    np.testing.assert_allclose(out.norms.numpy(), loop.norm(dim=1).numpy(), rtol=1e-5)  # ghost norm is exact
    kron = logra.kron["0"]
    w = loop[:, :54].reshape(5, 9, 6)
    full = torch.cat([w, loop[:, 54:63, None]], dim=2).reshape(5, -1).double()  # (out, in + bias column)
    dense = torch.kron(kron.p_out.matrix(), kron.p_in.matrix())
    np.testing.assert_allclose(out.features[:, 8:].double().numpy(), (full @ dense).numpy(), rtol=1e-4, atol=1e-5)
    assert logra.dim == 8 + 9


def test_ghost_norm():
    a, g = torch.randn(3, 5, 7, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    full = torch.einsum("bto,bti->boi", g, a)
    np.testing.assert_allclose(ghost_sq_norm(a, g).numpy(), (full**2).sum((1, 2)).numpy())


def test_features_do_not_depend_on_batching_or_padding(lora_lm):
    model, tok, _ = lora_lm
    settings = GradientSettings(proj_dim=64, batch_size=4)
    together = featurize_texts(model, tok, TEXTS, settings, prompts=PROMPTS)
    alone = featurize_texts(model, tok, TEXTS, GradientSettings(proj_dim=64, batch_size=1), prompts=PROMPTS)
    np.testing.assert_allclose(together.features, alone.features, atol=1e-5)
    np.testing.assert_allclose(together.norms, alone.norms, rtol=1e-5)
    assert together.features.shape == (4, 64) and together.slices == [("joint", 0, 64)]
    per_block = featurize_texts(model, tok, TEXTS, GradientSettings(proj_dim=200, layout="per_block"), prompts=PROMPTS)
    assert len(per_block.slices) == 8 and per_block.raw_sizes == [128] * 8  # blocks under 200 entries stay raw


def test_adam_state_lines_up_with_the_gradient(lora_lm, tmp_path):
    model, tok, _ = lora_lm
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in model.named_parameters() if p.requires_grad], lr=1e-3)
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for _ in range(2):
        opt.zero_grad()
        lm_loss(model, lm_batch(tok, TEXTS)).sum().backward()
        opt.step()
    torch.save({"param_names": names, "optimizer": opt.state_dict(), "scheduler": {}}, tmp_path / "optimizer.pt")
    feat = GradientFeaturizer(model, lm_loss)
    state = adam_state(Checkpoint("c", optimizer=tmp_path / "optimizer.pt"), feat.param_names)
    by_name = dict(zip(names, opt.state_dict()["state"].values()))
    expected = torch.cat([by_name[n]["exp_avg"].reshape(-1) for n in feat.param_names]).double()
    np.testing.assert_allclose(state.exp_avg.numpy(), expected.numpy())
    assert state.step == 2
    batch = lm_batch(tok, TEXTS)
    adam_feat = GradientFeaturizer(model, lm_loss, adam=state)
    raw = feat.raw(batch)[0]
    np.testing.assert_allclose(adam_feat(batch).features.numpy(), adam_transform(raw, state).float().numpy(),
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])
