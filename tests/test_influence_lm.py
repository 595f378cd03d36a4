"""The influence scorers end to end on a tiny causal LM (byte-level Llama built from a config,
briefly trained on a mixture of synthetic tasks), with a LESS-style LoRA warmup: a target drawn
from one task ranks that task's pool examples highest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from influence_fixtures import dataset, pretrained_lm, rows

from selectkit.contract.components import ScoreContext, Shape
from selectkit.recipe.spec import LoraSettings, ModelSpec, WarmupSpec
from selectkit.testing import features, run_scorer
from selectkit_plugins.lib.influence.run import gradient_requests
from selectkit_plugins.scorers.influence import EKFAC, DataInf, InverseHessian, Less, TracIn, Trak
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
    ctx = ScoreContext(pool=pool, targets={"rev": target}, seed=0,
                       model=ModelSpec(path=str(folder), kind="causal-lm", max_length=64, device="cpu", warmup=warmup))
    ctx.work = root / "work"  # one cache for the module: the warmup trains once
    return ctx


def scored(scorer, ctx, cache=None):
    return run_scorer(scorer, ctx, cache_dir=cache or ctx.work)


def _precision(ctx, values: np.ndarray, task: str = "reverse") -> float:
    relevant = np.array([t == task for t in ctx.pool.rows["task"].to_list()])
    return float(relevant[np.argsort(-values, kind="stable")[:PER_TASK]].mean())


def test_less_ranks_the_target_task_first(ctx):
    score = scored(Less(Less.Params()), ctx)
    assert score.shape is Shape.MATRIX and score.values.shape == (3 * PER_TASK, 1) and score.tasks == ("rev",)
    assert _precision(ctx, score.values[:, 0]) >= 0.8  # base rate 1/3; measured 1.0
    (warmup,) = [p for p in (ctx.work / "cache" / "train").iterdir() if not p.name.startswith(".")]
    folders = sorted(warmup.glob("shard-*"))
    assert [f.name for f in folders] == ["shard-00000", "shard-00001"]  # one checkpoint per epoch
    meta = [json.loads((f / "state.json").read_text()) for f in folders]
    assert meta[0]["lr"] > meta[1]["lr"] > 0  # linear decay: mean lr of each epoch
    assert (folders[0] / "optimizer.safetensors").exists() and (folders[0] / "adapter" /
                                                              "adapter_model.safetensors").exists()
    assert not list(warmup.rglob("*.pt")) and not list(warmup.rglob("*.bin"))  # nothing a load would unpickle
    vector = scored(Less(Less.Params(combine="max")), ctx)
    assert vector.shape is Shape.VECTOR
    np.testing.assert_allclose(vector.values, score.values[:, 0])


@pytest.mark.parametrize("cls", [TracIn, DataInf, Trak, EKFAC, InverseHessian], ids=lambda c: c.name)
def test_pairwise_scorers_rank_the_target_task_first(ctx, cls):
    params = {"hessian_examples": 48} if cls is InverseHessian else {}
    if cls is Trak:
        params = {"proj_dim": 1024}  # TracIn's store (cached by then): only X^T X and a solve
    score = scored(cls(cls.Params(**params)), ctx)
    assert score.values.shape == (3 * PER_TASK, 1) and np.isfinite(score.values).all()
    assert _precision(ctx, score.values[:, 0]) >= 0.7  # measured 1.0 for each


def test_ekfac_on_a_pool_its_fit_covers_needs_no_scoring_pass_and_scores_all_targets_at_once(ctx, tmp_path,
                                                                                                 monkeypatch):
    """A pool within `factor_examples` is scored from the gradients the fit kept; a pool the fit cannot keep
    (budget 0) takes the Lambda pass and one scoring pass for both targets. Both routes agree, per target.
    A sampled Fisher (labels unlike the scores') scores the pool shard by shard, both targets in one pass:
    each target's columns are what it gets scored alone."""
    import shutil

    from selectkit_plugins.lib.influence import ekfac

    targets = {"rev": ctx.targets["rev"], "add": dataset("add", rows(6, seed=3, tasks=("add",)))}
    two = ScoreContext(pool=ctx.pool, targets=targets, seed=0, model=ctx.model)
    got = []
    for keep in (ekfac.KEEP_BYTES, 0):
        monkeypatch.setattr(ekfac, "KEEP_BYTES", keep)
        cache = tmp_path / f"keep-{keep}"
        if ctx.work.exists():  # the module's warmup (when an earlier test trained it), not this test's scores
            shutil.copytree(ctx.work, cache)
        got.append(scored(EKFAC(EKFAC.Params()), two, cache).values)
    fused, passes = got
    assert fused.shape == (3 * PER_TASK, 2)
    np.testing.assert_allclose(fused, passes, rtol=1e-4, atol=1e-5 * np.abs(passes).max())
    assert _precision(ctx, fused[:, 0], "reverse") >= 0.7 and _precision(ctx, fused[:, 1], "add") >= 0.7
    monkeypatch.undo()
    sampled = EKFAC(EKFAC.Params(fisher="sampled"))
    both = scored(sampled, two, tmp_path / f"keep-{ekfac.KEEP_BYTES}").values
    alone = scored(sampled, ctx).values
    assert both.shape == (3 * PER_TASK, 2)
    np.testing.assert_allclose(both[:, :1], alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())
    assert _precision(ctx, both[:, 0], "reverse") >= 0.7 and _precision(ctx, both[:, 1], "add") >= 0.7


def test_the_plan_counts_ekfacs_pool_passes(tmp_path):
    """`plan` prices EK-FAC as the passes it makes: one over a pool within `factor_examples` (the fit
    gives the pool's gradients), the fit rows plus the pool otherwise."""
    from conftest import ROOT, cli

    recipes = ROOT / "recipes"
    text = (recipes / "less.yaml").read_text()
    text = text.replace("data/", f"{recipes}/data/").replace("models/tiny-lm", str(recipes / "models" / "tiny-lm"))
    text = text.replace("use: influence.less", "use: influence.ekfac").replace("score: influence,",
                                                                             "score: influence.politics,")
    flops, what = {}, {}
    for fit in (2000, 100):
        path = tmp_path / f"ekfac-{fit}.yaml"
        path.write_text(text.replace("with: {proj_dim: 1024, aggregate: mean, combine: max}",
                                     f"with: {{factor_examples: {fit}}}"))
        done = cli("plan", path, "--format", "json")
        assert done.returncode == 0, done.stderr
        (step,) = [s for s in json.loads(done.stdout)["steps"] if "ekfac_influence" in s["id"]]
        flops[fit], what[fit] = step["estimate"]["flops"], step["estimate"]["what"]
    rows = sum(1 for _ in open(recipes / "data" / "pool.jsonl"))
    assert "one pass" in what[2000] and "fit on 100 rows" in what[100], what
    assert flops[100] / flops[2000] == pytest.approx(1 + 100 / rows)


def test_self_influence_and_grand_are_lr_weighted_norms(ctx):
    si = scored(SelfInfluence(SelfInfluence.Params()), ctx).values
    gn = scored(GraNd(GraNd.Params()), ctx).values
    (request,) = gradient_requests(SelfInfluence.Params(), [], with_targets=False, keep_features=False, proj_dim=None)
    got = features([request], ctx.pool, model=ctx.model, cache_dir=ctx.work)
    feats = got.get(request.kind, "pool", **dict(request.settings))
    assert len(feats) == 2
    np.testing.assert_allclose(si, sum(f.lr * f.features.norms**2 for f in feats))
    np.testing.assert_allclose(gn, np.mean([f.features.norms for f in feats], axis=0))
    assert (si > 0).all() and si.shape == (3 * PER_TASK,)


def test_response_masking_changes_the_loss(ctx):
    plain = scored(Less(Less.Params()), ctx).values
    masked = scored(Less(Less.Params(response="response")), ctx).values
    assert not np.allclose(plain, masked)
    assert _precision(ctx, masked[:, 0]) > 1 / 3  # measured 0.6


def test_gauss_newton_vector_products_match_the_explicit_matrix(ctx):
    from peft import LoraConfig, get_peft_model
    from torch.func import functional_call, jacfwd
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    from selectkit_plugins.lib.influence.grads import lm_batch
    from selectkit_plugins.lib.influence.hessian import lm_ggn_vp

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


def test_warmup_resumes_from_any_epoch_exactly(ctx, tmp_path):
    """Train 3 epochs in one go, and again stopping after epoch 1 and 2 (a fresh process would
    rebuild the Warmup and restore the last checkpoint): the adapters and Adam moments are
    bit-identical, with dropout on (the generator behind it is reseeded per epoch)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    from selectkit_plugins.lib.influence.warmup import Warmup

    spec = WarmupSpec(fraction=0.5, epochs=3, learning_rate=1e-3, batch_size=8, micro_batch_size=4,
                      lora=LoraSettings(r=4, alpha=16, dropout=0.3, target_modules=["q_proj", "v_proj"]))
    texts = ctx.pool.texts[:24]

    def fresh():
        model = AutoModelForCausalLM.from_pretrained(ctx.model.path)
        return Warmup(model, ByT5Tokenizer(), texts, spec, seed=3, max_length=64)

    straight = fresh()
    for epoch in range(3):
        info = straight.train_epoch(epoch)
        (tmp_path / f"a{epoch}").mkdir()
        straight.save(tmp_path / f"a{epoch}", info)
    for stop in (0, 1):
        resumed = fresh()
        resumed.restore(tmp_path / f"a{stop}")
        for epoch in range(stop + 1, 3):
            info = resumed.train_epoch(epoch)
        out = tmp_path / f"b{stop}"
        out.mkdir()
        resumed.save(out, info)
        for name in ("adapter/adapter_model.safetensors", "optimizer.safetensors"):
            a, b = load_file(str(tmp_path / "a2" / name)), load_file(str(out / name))
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), (stop, name, key)
