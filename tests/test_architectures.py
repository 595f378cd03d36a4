"""Gradient work across architectures (issue 15): per-example gradients by hooks and vmap equal a
loop of single-example backward passes (each example alone, unpadded) on tiny GPT-2 (Conv1D),
OPT (MLP on flattened (B*T, d) rows), GPT-NeoX, Llama and Qwen2 models, with and without LoRA,
with padding and a response mask; tied embeddings (GPT-2, BERT) add up; LoGra factors, EK-FAC
factors and projected-feature rankings agree with references built from those loop gradients;
what cannot be handled is a SelectkitError naming the model type and the layer class."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from influence_fixtures import rows
from scipy.stats import spearmanr

from selectkit.errors import ModelError, SelectkitError
from selectkit_plugins.lib.influence.ekfac import (
    ekfac_scores,
    fit_ekfac,
    fit_rows_scores,
    kept_scores,
    precondition_queries,
    sampled_lm_loss,
    train_scores,
)
from selectkit_plugins.lib.influence.grads import GradientFeaturizer, group_rows, linear_modules, lm_batch, lm_loss
from selectkit_plugins.lib.influence.layers import (
    GradientSupportError,
    default_lora_targets,
    gradient_support,
    layer_kind,
    set_trainable,
    trainable_modules,
)
from selectkit_plugins.lib.influence.pipeline import GradientSettings, _unmasked_lm_loss, featurize_texts

torch.set_num_threads(2)
ARCHS = ("gpt2", "opt", "gpt_neox", "llama", "qwen2")
VOCAB = 260  # ByT5 ids of plain text: pad 0, eos 1, unk 2, bytes 3..258
TEXTS = ["reverse: abc -> cba", "add: 12+7 -> 19", "upper: hey -> HEY", "x y", "copy: pq -> pq"]
PROMPTS = ["reverse: abc -> ", "add: 12+7 -> ", "upper: hey -> ", None, None]
TOL = 1e-4  # max over examples of ||hooks - loop|| / ||loop||, float32


@pytest.fixture(scope="module")
def tok():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def build(arch: str, seed: int = 0):
    """A tiny randomly initialised causal LM (2 layers, hidden 32) in eval mode."""
    import transformers as tr

    tr.utils.logging.set_verbosity_error()
    torch.manual_seed(seed)
    ids = dict(vocab_size=VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    small = dict(num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64)
    if arch == "gpt2":
        model = tr.GPT2LMHeadModel(tr.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **ids))
    elif arch == "opt":
        model = tr.OPTForCausalLM(tr.OPTConfig(hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, **small, **ids))
    elif arch == "gpt_neox":
        model = tr.GPTNeoXForCausalLM(tr.GPTNeoXConfig(hidden_size=32, intermediate_size=64, **small, **ids))
    elif arch == "llama":
        model = tr.LlamaForCausalLM(tr.LlamaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2,
                                                   **small, **ids))
    elif arch == "qwen2":
        model = tr.Qwen2ForCausalLM(tr.Qwen2Config(hidden_size=32, intermediate_size=64, num_key_value_heads=1,
                                                   **small, **ids))
    else:
        raise ValueError(arch)
    return model.eval()


def with_lora(model, targets):
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "fan_in_fan_out is set to False" on GPT-2's Conv1D
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)  # peft starts B at 0, which zeroes lora_A's gradient
    return model.eval()


def prepared(arch: str, adapter: str):
    model = build(arch)
    if adapter == "lora":
        return with_lora(model, default_lora_targets(arch))
    set_trainable(model, trainable_modules(model, "linear"))
    return model


def loop_grads(model, names, tok, texts=TEXTS, prompts=PROMPTS, loss=lm_loss, make=None) -> torch.Tensor:
    """Reference: each example alone (its own length, no padding), one backward, flattened in `names` order."""
    named = dict(model.named_parameters())
    out = []
    for text, prompt in zip(texts, prompts):
        one = make([text]) if make is not None else lm_batch(tok, [text], [prompt])
        grads = torch.autograd.grad(loss(model, one).sum(), [named[n] for n in names])
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert bool((ref.norm(dim=1) > 0).all()), "a reference gradient is zero: the comparison proves nothing"
    return float(((got - ref).norm(dim=1) / ref.norm(dim=1)).max())


# ---------------------------------------------------------------- per-example gradients


@pytest.mark.parametrize("adapter", ["linear", "lora"])
@pytest.mark.parametrize("arch", ARCHS)
def test_per_example_gradients_equal_a_loop_of_backward_passes(arch, adapter, tok):
    model = prepared(arch, adapter)
    batch = lm_batch(tok, TEXTS, PROMPTS)
    assert (batch["attention_mask"] == 0).any() and (batch["labels"][0, :5] == -100).all()  # padding, prompt masked
    feat = GradientFeaturizer(model, lm_loss)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(feat.param_names) == trainable
    kinds = {b.kind for b in feat.blocks}
    assert kinds == ({"linear"} if adapter == "lora" or arch != "gpt2" else {"conv1d"})
    ref = loop_grads(model, feat.param_names, tok)
    assert rel_err(feat.raw(batch)[0], ref) <= TOL
    vmap = GradientFeaturizer(model, _unmasked_lm_loss, method="vmap")
    assert vmap.param_names == feat.param_names
    assert rel_err(vmap.raw(batch)[0], ref) <= TOL


def test_opt_mlp_sees_flattened_rows_and_lora_leaves_on_it_work(tok):
    model = build("opt")
    seen = []
    handle = model.model.decoder.layers[0].fc1.register_forward_hook(lambda m, a, o: seen.append(a[0].shape) and None)
    batch = lm_batch(tok, TEXTS, PROMPTS)
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    assert tuple(seen[0]) == (batch["input_ids"].numel(), 32)  # (B*T, d): padding kept, as group_rows assumes
    lora = with_lora(model, default_lora_targets("opt") + ["fc1", "fc2"])
    feat = GradientFeaturizer(lora, lm_loss)
    assert any(".fc1.lora_A" in n for n in feat.param_names)
    assert rel_err(feat.raw(batch)[0], loop_grads(lora, feat.param_names, tok)) <= TOL


def test_tied_embeddings_add_up_with_conv1d_layers(tok):
    model = build("gpt2")
    set_trainable(model, trainable_modules(model, "linear", ["wte", "c_attn"]))
    feat = GradientFeaturizer(model, lm_loss)
    emb = next(b for b in feat.blocks if b.kind == "embedding")
    assert emb.tied == ("lm_head",) and emb.params == ("transformer.wte.weight",)
    batch = lm_batch(tok, TEXTS, PROMPTS)
    assert rel_err(feat.raw(batch)[0], loop_grads(model, feat.param_names, tok)) <= TOL


def _mlm_batch(tok, texts):
    """Masked-LM batch: every third real token is replaced by id 2 and predicted."""
    b = lm_batch(tok, texts)
    ids, labels = b["input_ids"].clone(), torch.full_like(b["input_ids"], -100)
    pick = (torch.arange(ids.shape[1])[None] % 3 == 1) & (b["attention_mask"] == 1)
    labels[pick], ids[pick] = ids[pick], 2
    return {"input_ids": ids, "attention_mask": b["attention_mask"], "labels": labels}


def _mlm_loss(forward, batch):
    logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    valid = batch["labels"] != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"].clamp(min=0), reduction="none")
    return (ce * valid).sum(1) / valid.sum(1).clamp(min=1)


def test_bert_encoder_embeddings_tied_to_the_mlm_decoder(tok):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64, pad_token_id=0)).eval()
    set_trainable(bert, trainable_modules(bert, "linear", ["word_embeddings", *default_lora_targets("bert")]))
    feat = GradientFeaturizer(bert, _mlm_loss)
    assert feat.blocks[0].tied == ("cls.predictions.decoder",)
    ref = loop_grads(bert, feat.param_names, tok, loss=_mlm_loss, make=lambda t: _mlm_batch(tok, t))
    assert rel_err(feat.raw(_mlm_batch(tok, TEXTS))[0], ref) <= TOL


class _Toy(torch.nn.Module):
    """Embedding with a padding_idx that occurs in the text, and a Linear run on the unpadded
    tokens only (rows = mask.sum()), as unpadded attention kernels do."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(12, 6, padding_idx=3)
        self.inner = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, 12)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids)
        keep = attention_mask.bool()
        mixed = torch.zeros_like(h)
        mixed[keep] = torch.tanh(self.inner(h[keep]))
        return self.out(h + mixed)


def _toy_loss(forward, batch):
    logits = forward(batch["input_ids"], batch["attention_mask"])
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")
    mask = batch["attention_mask"]
    return (ce * mask).sum(1) / mask.sum(1)


def test_unpadded_rows_and_embedding_padding_idx():
    torch.manual_seed(0)
    net = _Toy()
    lengths = [5, 3, 1]  # 9 real tokens: also a multiple of B, which a plain reshape would misread
    ids = torch.randint(0, 12, (3, 5))
    ids[0, 1] = ids[1, 0] = 3  # the padding_idx row gets no gradient
    mask = (torch.arange(5)[None] < torch.tensor(lengths)[:, None]).long()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 12, (3, 5))}
    feat = GradientFeaturizer(net, _toy_loss)
    assert [b.kind for b in feat.blocks] == ["embedding", "linear", "linear"]
    named = dict(net.named_parameters())
    ref = []
    for i, n in enumerate(lengths):
        one = {k: v[i:i + 1, :n] for k, v in batch.items()}
        ref.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            _toy_loss(net, one).sum(), [named[p] for p in feat.param_names])]))
    ref = torch.stack(ref)
    assert float(ref[:, 3 * 6:4 * 6].abs().max()) == 0.0
    assert rel_err(feat.raw(batch)[0], ref) <= TOL


def test_group_rows_layouts():
    x = torch.randn(2, 4, 3)
    assert torch.equal(group_rows(x, 2), x)
    assert torch.equal(group_rows(x.reshape(8, 3), 2, tokens=4), x)  # OPT: (B*T, d)
    assert torch.equal(group_rows(x[:, 0], 2), x[:, :1])  # (B, d) -> one token each
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    got = group_rows(x[mask.bool()], 2, tokens=4, mask=mask)  # unpadded rows
    assert torch.equal(got, x * mask[..., None])
    ids = torch.randint(0, 9, (2, 4))
    assert torch.equal(group_rows(ids.reshape(-1), 2, tokens=4, feature_dims=0), ids)
    with pytest.raises(ValueError, match="which rows belong"):
        group_rows(torch.randn(7, 3), 2, tokens=4, mask=mask)
    with pytest.raises(ValueError, match="which rows belong"):
        group_rows(torch.randn(1, 4, 3), 2, tokens=4)  # broadcast over the batch (GPT-2's position embeddings)


# ---------------------------------------------------------------- LoGra, EK-FAC, rankings


def _linear_map_grad(block, flat: torch.Tensor) -> torch.Tensor:
    """A block's raw per-example gradient (storage order) as the linear-map matrix (d_out, d_in [+1])."""
    n = flat.shape[0]
    if block.kind == "embedding":  # weight (rows, d) = (d_in, d_out)
        return flat.reshape(n, block.d_in, block.d_out).transpose(1, 2)
    d_in = block.d_in - int(block.bias)
    w_size = d_in * block.d_out
    w = flat[:, :w_size].reshape(n, block.d_out, d_in) if block.kind == "linear" else \
        flat[:, :w_size].reshape(n, d_in, block.d_out).transpose(1, 2)
    return torch.cat([w, flat[:, w_size:, None]], dim=2) if block.bias else w


@pytest.mark.parametrize("arch,targets", [("gpt2", ["c_attn"]), ("llama", ["embed_tokens", "q_proj"])])
def test_logra_factors_of_conv1d_and_embedding_layers(arch, targets, tok):
    model = build(arch)
    set_trainable(model, trainable_modules(model, "linear", targets))
    full = GradientFeaturizer(model, lm_loss)
    logra = GradientFeaturizer(model, lm_loss, factorize_above=500, factor_dim=4)
    assert all(b.factorized for b in logra.blocks) and {b.kind for b in logra.blocks} == {layer_kind(
        m) for m in full.modules.values()}
    batch = lm_batch(tok, TEXTS, PROMPTS)
    ref = loop_grads(model, full.param_names, tok).double()
    out = logra(batch)
    np.testing.assert_allclose(out.norms.numpy(), ref.norm(dim=1).numpy(), rtol=1e-5)  # ghost norms are exact
    at = 0
    for block, (name, lo, hi) in zip(full.blocks, logra.slices, strict=True):
        assert name == block.name
        g = _linear_map_grad(block, ref[:, at:at + block.size]).reshape(len(TEXTS), -1)
        kron = logra.kron[name]
        dense = torch.kron(kron.p_out.matrix(), kron.p_in.matrix())
        np.testing.assert_allclose(out.features[:, lo:hi].double().numpy(), (g @ dense).numpy(), rtol=1e-4,
                                   atol=1e-6 * float(g.abs().max()))
        at += block.size


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_ekfac_factors_on_conv1d_and_flattened_layers(arch, tok):
    model = prepared(arch, "linear")
    modules = linear_modules(model)
    feat = GradientFeaturizer(model, lm_loss, modules=list(modules))
    batches = [lm_batch(tok, TEXTS[:3], PROMPTS[:3]), lm_batch(tok, TEXTS[3:], PROMPTS[3:])]
    layers = fit_ekfac(model, lm_loss, batches, modules)
    ref = loop_grads(model, feat.param_names, tok).double()
    per_layer, at = {}, 0
    for block in feat.blocks:
        per_layer[block.name] = _linear_map_grad(block, ref[:, at:at + block.size])
        at += block.size
    lam_err = 0.0
    for name, layer in layers.items():
        rot = layer.q_s.T @ per_layer[name] @ layer.q_a
        lam = (rot ** 2).mean(0)
        lam_err = max(lam_err, float((layer.eigenvalues() - lam).abs().max() / lam.abs().max()))
    assert lam_err <= TOL
    got = ekfac_scores(model, lm_loss, layers, modules, [batches[0]], [batches[1]])
    want = 0.0
    for name, layer in layers.items():
        rot = layer.q_s.T @ per_layer[name] @ layer.q_a
        pre = layer.precondition(rot[3:])
        want = want + torch.einsum("noi,moi->nm", rot[:3], pre)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-6 * float(np.abs(want.numpy()).max()))


@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_ekfac_one_pass_fit_and_kept_scores_equal_the_two_pass_route(fisher, tok):
    """The fit keeps its rows' gradients to skip the Lambda pass, and scoring those rows reuses them:
    both give what the second pass and a scoring pass give. A too-small budget takes the two passes;
    sampled labels are a function of the seed and the batch, so both passes draw the same ones."""
    model = prepared("llama", "lora")
    modules = linear_modules(model)
    batches = [lm_batch(tok, TEXTS[:3], PROMPTS[:3]), lm_batch(tok, TEXTS[3:], PROMPTS[3:])]
    loss = lm_loss if fisher == "empirical" else sampled_lm_loss(seed=3)
    one = fit_ekfac(model, loss, batches, modules)
    two = fit_ekfac(model, loss, batches, modules, keep_bytes=0)
    for name in modules:
        assert one[name].kept is not None and two[name].kept is None
        assert one[name].kept.shape == (len(TEXTS), *one[name].lam_sum.shape)
        torch.testing.assert_close(one[name].eigenvalues(), two[name].eigenvalues(), rtol=1e-6, atol=0)
    queries = precondition_queries(model, lm_loss, one, modules, [batches[1]])
    by_pass = train_scores(model, lm_loss, modules, batches, queries)
    assert by_pass.shape == (len(TEXTS), 2) and np.abs(by_pass).max() > 0
    if fisher == "empirical":  # the fit's gradients are the scoring gradients
        np.testing.assert_allclose(kept_scores(one, queries), by_pass, rtol=1e-5, atol=1e-7 * np.abs(by_pass).max())
    np.testing.assert_allclose(ekfac_scores(model, lm_loss, two, modules, batches, [batches[1]]), by_pass,
                               rtol=1e-4, atol=1e-6 * np.abs(by_pass).max())
    with pytest.raises(RuntimeError, match="did not keep"):
        kept_scores(two, queries)
    np.testing.assert_allclose(fit_rows_scores(model, lm_loss, two, modules, batches, queries), by_pass, rtol=1e-6)


def _short_rows(n: int, seed: int) -> list[dict]:
    return [r for r in rows(3 * n, seed) if len(r["text"]) <= 22][:n]


@pytest.mark.parametrize("arch", ARCHS)
def test_rankings_from_projected_features_match_gradient_cosine(arch, tok):
    """LESS (cosine) and TracIn (dot) scores of 16 pool x 4 target examples from featurize_texts
    (projected to 8192 dims, LESS's width) rank like the plain-torch scores of the loop gradients.
    (JL noise costs ~0.002 of Spearman here; across 6 projection seeds the minimum was 0.996.)"""
    model = with_lora(build(arch), default_lora_targets(arch))
    data = _short_rows(20, seed=3)
    texts, prompts = [r["text"] for r in data], [r["prompt"] for r in data]
    feats = featurize_texts(model, tok, texts, GradientSettings(proj_dim=8192, batch_size=4), prompts=prompts)
    x = torch.tensor(feats.features, dtype=torch.float64)
    g = loop_grads(model, GradientFeaturizer(model, lm_loss).param_names, tok, texts, prompts).double()
    np.testing.assert_allclose(feats.norms, g.norm(dim=1).numpy(), rtol=1e-4)

    def scores(v, cosine):
        v = v / v.norm(dim=1, keepdim=True) if cosine else v
        return (v[:16] @ v[16:].T).numpy().ravel()

    for cosine in (True, False):
        rho = spearmanr(scores(x, cosine), scores(g, cosine))[0]
        assert rho >= 0.99, (arch, "cosine" if cosine else "dot", rho)


# ---------------------------------------------------------------- clear errors


def test_what_hooks_cannot_handle_is_a_clear_error(tok):
    batch = lm_batch(tok, TEXTS, PROMPTS)
    model = build("gpt2")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(GradientSupportError, match="gpt2: the model has no trainable parameters"):
        GradientFeaturizer(model, lm_loss)
    model.transformer.ln_f.weight.requires_grad_(True)
    with pytest.raises(GradientSupportError, match="gpt2: trainable parameter transformer.ln_f.weight belongs to a "
                       "LayerNorm") as info:
        GradientFeaturizer(model, lm_loss)
    assert isinstance(info.value, SelectkitError) and isinstance(info.value, ModelError)
    set_trainable(model, trainable_modules(model, "linear", ["wpe"]))
    with pytest.raises(GradientSupportError, match=r"gpt2: layer transformer.wpe \(Embedding\) sees a tensor"):
        GradientFeaturizer(model, lm_loss).raw(batch)  # position embeddings are broadcast over the batch
    set_trainable(model, trainable_modules(model, "linear", ["wte"]))
    with pytest.raises(GradientSupportError, match="tied embeddings"):
        GradientFeaturizer(model, lm_loss, factorize_above=1000)
    with pytest.raises(GradientSupportError, match="layer transformer.wte is a Embedding"):
        linear_modules(model, ["transformer.wte"])
    with pytest.raises(GradientSupportError, match="EK-FAC factors cover Linear and Conv1D layers"):
        fit_ekfac(model, lm_loss, [batch], {"transformer.wte": model.transformer.wte})
    with pytest.raises(GradientSupportError, match="target module transformer.ln_f is a LayerNorm"):
        trainable_modules(model, "linear", ["ln_f"])
    with pytest.raises(GradientSupportError, match="gpt2: params 'lora' needs a LoRA adapter"):
        trainable_modules(model, "lora")
    set_trainable(model, trainable_modules(model, "linear"))
    with pytest.raises(GradientSupportError, match="gpt2: per-example gradients by vmap failed"):
        GradientFeaturizer(model, lm_loss, method="vmap").raw(batch)  # HF's mask construction is not vmappable


def test_lora_on_embeddings_is_a_clear_error_by_hooks_and_works_by_vmap(tok):
    model = with_lora(build("gpt2"), ["wte", "c_attn"])  # peft keeps lora_embedding_A/B as bare parameters
    with pytest.raises(GradientSupportError, match=r"lora_embedding_A.default belongs to a "
                       r"peft.tuners.lora.layer.Embedding layer \(base_model.model.transformer.wte\)"):
        GradientFeaturizer(model, lm_loss)
    feat = GradientFeaturizer(model, _unmasked_lm_loss, method="vmap")
    assert any("lora_embedding_A" in n for n in feat.param_names)
    assert rel_err(feat.raw(lm_batch(tok, TEXTS, PROMPTS))[0], loop_grads(model, feat.param_names, tok)) <= TOL


# ---------------------------------------------------------------- trainable layers and LoRA targets


def test_trainable_modules_per_architecture(tok, tmp_path):
    from selectkit.models.loader import load_model
    from selectkit.recipe.spec import ModelSpec
    from selectkit_plugins.lib.influence.checkpoints import unfreeze

    gpt2 = build("gpt2")
    chosen = trainable_modules(gpt2, "linear")
    assert {layer_kind(m) for m in chosen.values()} == {"conv1d"} and "lm_head" not in chosen  # tied to wte
    assert len(chosen) == 2 * 4
    llama = build("llama")
    assert "lm_head" in trainable_modules(llama, "linear")  # untied
    lora = with_lora(build("llama"), ["q_proj", "v_proj"])
    only_v = trainable_modules(lora, "lora", ["v_proj"])
    assert len(only_v) == 2 * 2 and all(".v_proj.lora_" in n for n in only_v)
    assert set(trainable_modules(lora, "lora")) == {n.rsplit(".", 1)[0] for n, p in lora.named_parameters()
                                                     if "lora_" in n}
    gpt2.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    loaded = load_model(ModelSpec(path=str(tmp_path / "gpt2"), kind="causal-lm", device="cpu"), merge_lora=False)
    unfreeze(loaded.model, "linear", has_adapter=False)  # used to find no trainable parameters
    feat = GradientFeaturizer(loaded.model, lm_loss)
    assert feat.raw_dim == sum(m.weight.numel() + m.bias.numel() for m in chosen.values())


def _attention_leaves(model) -> set[str]:
    """Full names of the Linear/Conv1D layers inside attention blocks, found independently."""
    out = set()
    for name, module in model.named_modules():
        if "Attention" in type(module).__name__:
            out |= {f"{name}.{sub}" for sub, m in module.named_modules() if layer_kind(m) in ("linear", "conv1d")}
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_default_lora_targets_wrap_the_attention_projections(arch):
    base = build(arch)
    expected = _attention_leaves(base)
    assert set(default_lora_targets("not-a-known-type", model=base)) == set(default_lora_targets(arch))
    lora = with_lora(base, default_lora_targets(arch))
    wrapped = {n.split(".lora_A")[0].removeprefix("base_model.model.") for n, _ in lora.named_parameters()
               if ".lora_A." in n}
    assert wrapped == expected


def test_default_lora_targets_unknown_and_gradient_support_without_torch():
    with pytest.raises(ModelError, match="no default LoRA target modules for model type 'mamba-ish'"):
        default_lora_targets("mamba-ish")
    with pytest.raises(ModelError, match="no Linear or Conv1D layers inside its attention blocks"):
        default_lora_targets("mlp-only", model=torch.nn.Sequential(torch.nn.Linear(2, 2)))
    for arch in ARCHS:
        assert gradient_support(build(arch).config.to_dict()) is None
    assert "model type 'bert' (BertForMaskedLM) is not a causal LM" in gradient_support(
        {"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    assert "encoder-decoder" in gradient_support({"model_type": "t5", "is_encoder_decoder": True})
    assert "no model_type" in gradient_support({})
    quant = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
             "quantization_config": {"quant_method": "gptq"}}
    assert gradient_support(quant) is None and "quantized weights (gptq)" in gradient_support(quant, "linear")
    code = ("import sys; from selectkit_plugins.lib.influence.layers import default_lora_targets, gradient_support; "
            "assert gradient_support({'model_type': 'gpt2'}) is None and default_lora_targets('opt'); "
            "assert 'torch' not in sys.modules, 'layers imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- the scorers end to end


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_tracin_scorer_runs_on_gpt2_and_opt(arch, tok, tmp_path):
    """The failure issue 15 reported, through a scorer: TracIn on raw gradients of every Linear /
    Conv1D layer equals the mean over target examples of the loop gradients' dot products."""
    from influence_fixtures import dataset

    from selectkit.contract.components import ScoreContext
    from selectkit.recipe.spec import ModelSpec
    from selectkit.testing import run_scorer
    from selectkit_plugins.scorers.influence import TracIn

    model = build(arch)
    model.save_pretrained(tmp_path / arch)
    tok.save_pretrained(tmp_path / arch)
    pool, target = _short_rows(6, seed=1), _short_rows(3, seed=2)
    ctx = ScoreContext(pool=dataset("pool", pool), targets={"t": dataset("t", target)}, seed=0,
                       model=ModelSpec(path=str(tmp_path / arch), kind="causal-lm", max_length=64, device="cpu"))
    got = run_scorer(TracIn(TracIn.Params(proj_dim=None)), ctx, cache_dir=tmp_path / "work").values[:, 0]
    set_trainable(model, trainable_modules(model, "linear"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    texts = [r["text"] for r in pool + target]
    g = loop_grads(model, names, tok, texts, [None] * len(texts)).double()
    want = (g[:6] @ g[6:].T).mean(1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))
