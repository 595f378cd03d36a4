"""Influence benchmark: per-example gradient throughput and agreement with inverse-Hessian influence.

A. Throughput on a tiny causal LM + LoRA: wall time of each way to get per-example gradient
   features, as a ratio to one plain batched forward+backward over the same batches (median of
   --repeats runs, measured interleaved so machine load hits all alike).
B. Agreement with the inverse-Hessian reference (mean per-target Spearman over pool scores):
   Tier 0, digits logistic regression (exact Hessian); Tier 2, the tiny LM (Gauss-Newton, CG).

    .venv/bin/python benchmarks/bench_influence.py            # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_influence.py --quick    # fewer examples, 3 repeats
    .venv/bin/python benchmarks/bench_influence.py --smollm2  # C only: SmolLM2-135M shape, k=8192 (~5 min)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402


def _texts(n: int, seed: int) -> list[str]:
    """Synthetic instruction-like texts of ~32-64 bytes: 2-3 task examples joined."""
    from influence_fixtures import TASKS, example

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [p + r for p, r in (example(rng.choice(TASKS), rng) for _ in range(rng.randint(2, 3)))]
        out.append(" | ".join(parts))
    return out


def _model(hidden: int, rank: int):
    from peft import LoraConfig, get_peft_model
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = ByT5Tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         bos_token_id=None, eos_token_id=1, pad_token_id=0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(
        r=rank, lora_alpha=4 * rank, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    return model.eval(), tok


def throughput(n: int, batch_size: int, repeats: int, hidden: int, rank: int) -> list[dict]:
    from selectkit_plugins.lib.influence.grads import GradientFeaturizer, lm_batch, lm_loss, per_example_grads_loop
    from selectkit_plugins.lib.influence.pipeline import _unmasked_lm_loss

    model, tok = _model(hidden, rank)
    texts = _texts(n, 0)
    order = np.argsort([-len(t) for t in texts], kind="stable")  # length-sorted batches, as featurize_texts does
    batches = [lm_batch(tok, [texts[i] for i in order[s:s + batch_size]]) for s in range(0, n, batch_size)]
    feats = {
        "hooks, raw gradients": GradientFeaturizer(model, lm_loss),
        "hooks + projection k=1024": GradientFeaturizer(model, lm_loss, proj_dim=1024),
        "hooks + projection k=8192": GradientFeaturizer(model, lm_loss, proj_dim=8192),
        "hooks + sjlt k=8192 (auto)": GradientFeaturizer(model, lm_loss, proj_dim=8192, proj_kind="auto"),
        "hooks + LoGra k=16x16/layer": GradientFeaturizer(model, lm_loss, proj_dim=1024, factorize_above=1,
                                                          factor_dim=16),
        "vmap, raw gradients": GradientFeaturizer(model, _unmasked_lm_loss, method="vmap"),
    }
    names = feats["hooks, raw gradients"].param_names

    def fwd_bwd():
        for b in batches:
            model.zero_grad(set_to_none=True)
            lm_loss(model, b).mean().backward()

    def run(f):
        return lambda: [f(b) for b in batches]

    def loop():
        for b in batches[:2]:  # batch-1 backward passes (LESS's collect_grads); timed on 2 batches, scaled
            per_example_grads_loop(model, lm_loss, b, names)

    jobs = {"forward+backward (batched)": fwd_bwd, **{k: run(f) for k, f in feats.items()},
            "loop of batch-1 backward (LESS)": loop}
    for f in feats.values():  # warm caches (projection blocks) once
        f(batches[0])
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed * (len(batches) / 2 if name.startswith("loop") else 1))
    base = float(np.median(times["forward+backward (batched)"]))
    lora = feats["hooks, raw gradients"].raw_dim
    return [{"bench": "throughput", "method": k, "median_s": float(np.median(v)), "ratio": float(np.median(v)) / base,
             "examples_per_s": n / float(np.median(v)), "lora_params": lora, "n": n, "batch_size": batch_size}
            for k, v in times.items()]


def smollm2_shape(n: int, batch_size: int, repeats: int, max_length: int) -> list[dict]:
    """C. The issue-21 goal at a real model's width: SmolLM2-135M's architecture built from its config
    (random weights: cost does not depend on the values) with LoRA r=8 on q,k,v,o (921,600 parameters),
    per-example features at k = 8192 by the `auto` projection (the sparse JL transform) against a plain
    length-sorted batched forward+backward of the same LoRA model and batches. Then the projection's
    quality against the exact (unprojected) gradients of the same texts: the relative inner-product
    error |<Px,Py> - <x,y>| / (|x||y|), and the Spearman of each target's grad-dot (TracIn) ranking of
    the pool with the exact one (the first n - 8 texts are the pool, the last 8 the targets)."""
    from peft import LoraConfig, get_peft_model
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    from selectkit_plugins.lib.influence.grads import GradientFeaturizer, lm_batch, lm_loss

    torch.manual_seed(0)
    tok = ByT5Tokenizer()
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=1, pad_token_id=0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    model.eval()
    texts = [t[:max_length] for t in _texts(n, 1)]
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = [lm_batch(tok, [texts[i] for i in order[s:s + batch_size]]) for s in range(0, n, batch_size)]
    wide = GradientFeaturizer(model, lm_loss, proj_dim=8192, proj_kind="auto")
    exact = GradientFeaturizer(model, lm_loss)

    def fwd_bwd():
        for b in batches:
            model.zero_grad(set_to_none=True)
            lm_loss(model, b).mean().backward()

    jobs = {"forward+backward (batched)": fwd_bwd, "hooks + sjlt k=8192 (auto)": lambda: [wide(b) for b in batches]}
    fwd_bwd()  # warm both (allocator, autograd, the projection's index tables) before timing
    wide(batches[0])
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    base = float(np.median(times["forward+backward (batched)"]))
    out = [{"bench": "smollm2-shape", "method": k, "median_s": float(np.median(v)), "ratio": float(np.median(v)) / base,
            "examples_per_s": n / float(np.median(v)), "lora_params": exact.raw_dim, "n": n,
            "batch_size": batch_size} for k, v in times.items()]
    inverse = np.argsort(order)
    projected = torch.cat([wide(b).features for b in batches]).double().numpy()[inverse]
    raw = torch.cat([exact.raw(b)[0] for b in batches]).double().numpy()[inverse]
    pool, target = slice(0, n - 8), slice(n - 8, n)
    true = raw[pool] @ raw[target].T
    approx = projected[pool] @ projected[target].T
    scale = np.outer(np.linalg.norm(raw[pool], axis=1), np.linalg.norm(raw[target], axis=1))
    rel = np.abs(approx - true) / scale
    rho = [spearmanr(approx[:, j], true[:, j])[0] for j in range(true.shape[1])]
    out.append({"bench": "smollm2-shape", "method": "quality sjlt k=8192", "median_rel_ip_error": float(np.median(rel)),
                "p95_rel_ip_error": float(np.quantile(rel, 0.95)), "tracin_spearman_mean": float(np.mean(rho)),
                "tracin_spearman_min": float(np.min(rho)), "n": n})
    return out


def agreement_lr() -> list[dict]:
    """Tier 0: digits LR (1000 train, lambda=1), 20 test points; Spearman with the exact IF."""
    import influence_reference as ref

    from selectkit.contract.projection import Projector
    from selectkit.storage.gradient_store import unit_rows
    from selectkit_plugins.lib.influence.ekfac import EKFACLayer
    from selectkit_plugins.lib.influence.hessian import inverse_hessian_scores
    from selectkit_plugins.lib.influence.scores import datainf

    x, y, xt, yt = ref.load_split("digits", 1000)
    model = ref.fit(x, y, 1.0)
    test = np.random.default_rng(0).choice(len(xt), 20, replace=False)
    g, gt = model.grads(x, y), model.grads(xt[test], yt[test])
    exact = inverse_hessian_scores(g, gt, model.hessian(x))
    a, s, w = ref.fisher_samples(model, x)
    layer = EKFACLayer(x.shape[1], model.classes)
    at, st, wt = torch.tensor(a)[:, None], torch.tensor(s)[:, None], torch.tensor(w)
    layer.add_covariance(at, st, weight=wt)
    layer.eigendecompose()
    layer.add_lambda(at, st, weight=wt)
    c = model.classes

    def kfac(kf):
        pre = layer.precondition_matrix(torch.tensor(gt).view(len(gt), c, -1), 1.0 / len(x), kf)
        return torch.einsum("noi,moi->nm", torch.tensor(g).view(len(g), c, -1), pre).numpy()

    proj = Projector(g.shape[1], 256, seed=0)
    pg, pgt = proj(torch.tensor(g)).double().numpy(), proj(torch.tensor(gt)).double().numpy()
    blocks = [(i * x.shape[1], (i + 1) * x.shape[1]) for i in range(c)]
    methods = {"EK-FAC": kfac(False), "K-FAC": kfac(True), "DataInf (one block)": datainf(g, gt),
               "DataInf (a block per class row)": datainf(g, gt, blocks), "grad-dot (TracIn)": g @ gt.T,
               "grad-dot, projected k=256": pg @ pgt.T, "grad-cos": unit_rows(g) @ unit_rows(gt).T}
    return [{"bench": "agreement", "tier": "digits LR", "method": k,
             "spearman": float(np.mean([spearmanr(v[:, j], exact[:, j])[0] for j in range(len(test))]))}
            for k, v in methods.items()]


def agreement_lm(per_task: int) -> list[dict]:
    """Tier 2: tiny LM + LoRA warmup; Spearman of pool scores with influence.inverse_hessian (GGN, CG)."""
    from influence_fixtures import dataset, pretrained_lm, rows

    from selectkit.contract.components import ScoreContext
    from selectkit.recipe.spec import LoraSettings, ModelSpec, WarmupSpec
    from selectkit.testing import run_scorer
    from selectkit_plugins.scorers.influence import EKFAC, DataInf, InverseHessian, Less, TracIn

    work = Path(tempfile.mkdtemp(prefix="bench-influence-"))
    folder = pretrained_lm(work / "lm", steps=60)
    warm = WarmupSpec(fraction=0.25, epochs=2, learning_rate=1e-3, batch_size=8, micro_batch_size=8,
                      lora=LoraSettings(r=4, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    targets = {t: dataset(t, rows(5, seed=7 + i, tasks=(t,))) for i, t in enumerate(("reverse", "add", "upper"))}
    ctx = ScoreContext(pool=dataset("pool", rows(per_task, seed=1)), targets=targets, seed=0,
                       model=ModelSpec(path=str(folder), kind="causal-lm", max_length=64, device="cpu", warmup=warm))
    timed = {}
    for name, scorer in (("inverse-Hessian (GGN, CG)", InverseHessian(InverseHessian.Params(hessian_examples=128))),
                         ("EK-FAC", EKFAC(EKFAC.Params())), ("DataInf", DataInf(DataInf.Params())),
                         ("TracIn (k=1024)", TracIn(TracIn.Params())), ("LESS (k=1024)", Less(Less.Params())),
                         ("LESS (k=8192)", Less(Less.Params(proj_dim=8192)))):
        start = time.perf_counter()
        timed[name] = (run_scorer(scorer, ctx, cache_dir=work / "work").values, time.perf_counter() - start)
    ref_values = timed["inverse-Hessian (GGN, CG)"][0]
    tasks = ctx.pool.rows["task"].to_list()
    out = []
    for name, (values, secs) in timed.items():
        rho = np.mean([spearmanr(values[:, j], ref_values[:, j])[0] for j in range(values.shape[1])])
        hits = np.mean([np.mean([tasks[i] == t for i in np.argsort(-values[:, j])[:per_task]])
                        for j, t in enumerate(targets)])
        out.append({"bench": "agreement", "tier": "tiny LM + LoRA", "method": name, "spearman": float(rho),
                    "precision_at_task_size": float(hits), "seconds": secs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smollm2", action="store_true", help="only part C: the SmolLM2-135M-shaped ratio and quality")
    ap.add_argument("--n", type=int, default=48, help="part C: texts (the last 8 are the targets)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.smollm2:
        results = smollm2_shape(args.n, 8, args.repeats, max_length=128)
        print(f"C. SmolLM2-135M shape (random weights) + LoRA r=8 on q,k,v,o ({results[0]['lora_params']} params), "
              f"{args.n} texts of <=128 bytes, batch 8, {args.threads} threads, median of {args.repeats}")
        for r in results[:-1]:
            print(f"{r['method']:38s} {r['median_s']:9.3f} s {r['ratio']:6.2f} x fwd+bwd "
                  f"{r['examples_per_s']:7.2f} ex/s")
        q = results[-1]
        print(f"sjlt k=8192 vs exact gradients: relative inner-product error median {q['median_rel_ip_error']:.4f} "
              f"(p95 {q['p95_rel_ip_error']:.4f}); TracIn ranking Spearman mean {q['tracin_spearman_mean']:.4f} "
              f"(min {q['tracin_spearman_min']:.4f})")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return
    n = 64 if args.quick else 256
    results = throughput(n, 16, args.repeats, hidden=64, rank=8)
    lora = results[0]["lora_params"]
    print(f"A. per-example LoRA gradients: {n} examples of 32-64 bytes, batch 16, tiny Llama (hidden 64, 2 layers) "
          f"+ LoRA r=8 on q,k,v,o ({lora} params), {args.threads} threads, median of {args.repeats}")
    print(f"{'method':38s} {'median s':>9s} {'x fwd+bwd':>9s} {'ex/s':>8s}")
    for r in results:
        print(f"{r['method']:38s} {r['median_s']:9.3f} {r['ratio']:9.2f} {r['examples_per_s']:8.1f}")
    agree = agreement_lr() + agreement_lm(20 if args.quick else 40)
    print("\nB. agreement with inverse-Hessian influence (mean per-target Spearman)")
    for r in agree:
        extra = f"  precision@task {r['precision_at_task_size']:.2f}  {r['seconds']:.1f}s" if "seconds" in r else ""
        print(f"{r['tier']:16s} {r['method']:34s} {r['spearman']:6.3f}{extra}")
    if args.json:
        args.json.write_text(json.dumps(results + agree, indent=1))


if __name__ == "__main__":
    main()
