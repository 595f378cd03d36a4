"""The influence scorers end to end on a tiny causal LM (byte-level Llama built from a config,
briefly trained on a mixture of synthetic tasks), with a LESS-style LoRA warmup: a target drawn
from one task ranks that task's pool examples highest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from influence_fixtures import Spec, dataset, pretrained_lm, rows

from selectkit.components import ScoreContext, Shape
from selectkit.recipe import LoraSettings, WarmupSpec
from selectkit_plugins.influence.checkpoints import epoch_folders
from selectkit_plugins.scorers.influence import EKFAC, DataInf, InverseHessian, Less, TracIn
from selectkit_plugins.scorers.self_influence import GraNd, SelfInfluence

torch.set_num_threads(2)
PER_TASK = 40


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("influence-lm")
    folder = pretrained_lm(root / "lm")
    warmup = WarmupSpec(fraction=0.5, epochs=2, learning_rate=1e-3, batch_size=8, micro_batch_size=8,
                        lora=LoraSettings(r=4, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    pool = dataset("pool", rows(PER_TASK, seed=1))
    target = dataset("rev", rows(6, seed=2, tasks=("reverse",)))
    return ScoreContext(pool=pool, targets={"rev": target}, seed=0, model=Spec(str(folder), warmup=warmup),
                        workdir=root / "work" / "score")


def _precision(ctx, values: np.ndarray, task: str = "reverse") -> float:
    relevant = np.array([t == task for t in ctx.pool.rows["task"].to_list()])
    return float(relevant[np.argsort(-values, kind="stable")[:PER_TASK]].mean())


def test_less_ranks_the_target_task_first(ctx):
    score = Less(Less.Params()).run(ctx)
    assert score.shape is Shape.MATRIX and score.values.shape == (3 * PER_TASK, 1) and score.tasks == ("rev",)
    assert _precision(ctx, score.values[:, 0]) >= 0.8  # base rate 1/3; measured 1.0
    folders = epoch_folders(ctx.workdir.parent / "influence" / next(
        p.name for p in (ctx.workdir.parent / "influence").iterdir() if p.name.startswith("warmup-")))
    assert [f.name for f in folders] == ["epoch-1", "epoch-2"]
    meta = [json.loads((f / "checkpoint.json").read_text()) for f in folders]
    assert meta[0]["lr"] > meta[1]["lr"] > 0  # linear decay: mean lr of each epoch
    assert (folders[0] / "optimizer.pt").exists() and (folders[0] / "adapter_model.safetensors").exists()
    vector = Less(Less.Params(combine="max")).run(ctx)
    assert vector.shape is Shape.VECTOR
    np.testing.assert_allclose(vector.values, score.values[:, 0])


@pytest.mark.parametrize("cls", [TracIn, DataInf, EKFAC, InverseHessian], ids=lambda c: c.name)
def test_pairwise_scorers_rank_the_target_task_first(ctx, cls):
    params = {"hessian_examples": 48} if cls is InverseHessian else {}
    score = cls(cls.Params(**params)).run(ctx)
    assert score.values.shape == (3 * PER_TASK, 1) and np.isfinite(score.values).all()
    assert _precision(ctx, score.values[:, 0]) >= 0.7  # measured 1.0 for each


def test_self_influence_and_grand_are_lr_weighted_norms(ctx):
    from selectkit_plugins.influence.run import gradient_features

    si = SelfInfluence(SelfInfluence.Params()).run(ctx).values
    gn = GraNd(GraNd.Params()).run(ctx).values
    feats = gradient_features(ctx, SelfInfluence.Params(), with_targets=False, keep_features=False, proj_dim=None)
    assert len(feats) == 2
    np.testing.assert_allclose(si, sum(f.checkpoint.lr * f.pool.norms**2 for f in feats))
    np.testing.assert_allclose(gn, np.mean([f.pool.norms for f in feats], axis=0))
    assert (si > 0).all() and si.shape == (3 * PER_TASK,)


def test_response_masking_changes_the_loss(ctx):
    plain = Less(Less.Params()).run(ctx).values
    masked = Less(Less.Params(response="response")).run(ctx).values
    assert not np.allclose(plain, masked)
    assert _precision(ctx, masked[:, 0]) > 1 / 3  # measured 0.6


def test_gauss_newton_vector_products_match_the_explicit_matrix(ctx):
    from peft import LoraConfig, get_peft_model
    from torch.func import functional_call, jacfwd
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    from selectkit_plugins.influence.grads import lm_batch
    from selectkit_plugins.influence.hessian import lm_ggn_vp

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(ctx.model.path, attn_implementation="eager", dtype=torch.float64)
    model = get_peft_model(model, LoraConfig(r=1, lora_alpha=2, target_modules=["q_proj"], lora_dropout=0.0)).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    data = rows(1, seed=5)
    batch = lm_batch(ByT5Tokenizer(), [r["text"] for r in data], [r["prompt"] for r in data])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    gvp = lm_ggn_vp(model, [batch], names)
    size = sum(dict(model.named_parameters())[n].numel() for n in names)
    ggn = torch.stack([gvp(e) for e in torch.eye(size, dtype=torch.float64)])
    params = {n: dict(model.named_parameters())[n].detach() for n in names}

    def logits(p):
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return functional_call(model, p, (), kw).logits[:, :-1]

    jac = jacfwd(logits)(params)
    jac = torch.cat([jac[n].reshape(*jac[n].shape[:3], -1) for n in names], -1)  # (B, T, V, P)
    probs = torch.softmax(logits(params), -1)
    valid = (batch["labels"][:, 1:] != -100).double()
    weight = valid / valid.sum(1, keepdim=True) / len(data)
    h_out = torch.diag_embed(probs) - probs[..., :, None] * probs[..., None, :]
    expected = torch.einsum("btvp,btvw,btwq,bt->pq", jac, h_out, jac, weight)
    np.testing.assert_allclose(ggn.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6 * float(expected.abs().max()))


def test_warmup_resumes_from_the_last_complete_epoch(ctx, tmp_path):
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    from selectkit_plugins.influence.warmup import train_warmup, warmup_indices

    spec = ctx.model.warmup
    texts = [ctx.pool.texts[i] for i in warmup_indices(len(ctx.pool), 0.2, 0)]

    def train(out):
        model = AutoModelForCausalLM.from_pretrained(ctx.model.path)
        return train_warmup(model, ByT5Tokenizer(), texts, out, spec, seed=3)

    full = train(tmp_path / "a")
    train(tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "epoch-2")  # killed during epoch 2
    resumed = train(tmp_path / "b")
    assert [f.name for f in resumed] == ["epoch-1", "epoch-2"]
    a, b = (load_file(str(f / "adapter_model.safetensors")) for f in (full[1], resumed[1]))
    for key in a:
        torch.testing.assert_close(a[key], b[key])
