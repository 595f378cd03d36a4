"""UnTrac-Inv on real text (issue 15, item 4): why short high-loss lines dominate.

The case: target = the first 100 review texts of the demo pool; pool = the other 200 reviews plus
155 each of news headlines, debate statements and Hamlet lines (665 texts, reviews 30%). Model: the
demo tiny-lm. One gradient ascent on the target with UnTrac-Inv's defaults (sgd, lr 3e-4, 50 steps,
batch 8 x 32, readings every 10 steps; `selectkit_plugins.passes.unlearn.ascend`, the pass's own
code), recording every pool text's per-token log-probs at each reading, so that aggregations can be
compared offline on one run: the current score (mean per-token loss change, averaged over readings),
relative, summed, length-scaled, median, first/last reading, and the residual after regressing the
score on log-length and starting loss. Precision = share of reviews in the top 200 (R-precision) and
in the top 10%.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_untrac_real.py            # ascent + analysis
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_untrac_real.py --analyze benchmarks/.work/untrac_default.npz
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_untrac_real.py small      # three step sizes, batch 8 x 4
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_untrac_real.py control    # ascent on 100 random pool texts
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]


def analyze(path):
    f = np.load(path, allow_pickle=True)
    base, reads, dom = f["base"], f["reads"], f["domain"]
    rev = dom == "reviews"
    n = np.array([len(b) for b in base])
    ok = n > 0
    k = int(rev.sum())
    base_loss = np.array([-b.mean() if len(b) else np.nan for b in base])
    def prec(score, top=k):
        s = np.where(np.isfinite(score), score, -np.inf)
        idx = np.argsort(-s, kind="stable")[:top]
        return rev[idx].mean()
    def per_token_delta(r):  # list over texts of per-token loss change at reading r
        return [-(reads[r][i] - base[i]) for i in range(len(base))]
    R = len(reads)
    deltas = [per_token_delta(r) for r in range(R)]
    def agg(fn):
        return np.mean([[fn(d[i], i) if len(d[i]) else np.nan for i in range(len(base))] for d in deltas], axis=0)
    mean_d = agg(lambda d, i: d.mean())
    variants = {
        "mean per token (current)": mean_d,
        "relative (mean / base loss)": mean_d / base_loss,
        "sum over tokens": agg(lambda d, i: d.sum()),
        "mean x sqrt(tokens)": mean_d * np.sqrt(n),
        "median per token": agg(lambda d, i: np.median(d)),
        "last reading only": np.array([deltas[-1][i].mean() if n[i] else np.nan for i in range(len(base))]),
        "first reading only": np.array([deltas[0][i].mean() if n[i] else np.nan for i in range(len(base))]),
    }
    X = np.column_stack([np.ones(ok.sum()), np.log(n[ok]), base_loss[ok]])
    res = np.full(len(base), np.nan)
    coef, *_ = np.linalg.lstsq(X, mean_d[ok], rcond=None)
    res[ok] = mean_d[ok] - X @ coef
    variants["residual on log-length + base loss"] = res
    print(f"pool {len(base)}, reviews {k} (base rate {rev.mean():.3f}), readings {R}, "
          f"seconds {float(f['seconds']):.0f}")
    print(f"Spearman(current score, tokens) = {spearmanr(mean_d[ok], n[ok])[0]:.3f}; "
          f"(current, base loss) = {spearmanr(mean_d[ok], base_loss[ok])[0]:.3f}; "
          f"reviews' median tokens {np.median(n[rev]):.0f} vs others {np.median(n[~rev]):.0f}; "
          f"base loss {np.nanmedian(base_loss[rev]):.2f} vs {np.nanmedian(base_loss[~rev]):.2f}")
    cur_top = np.argsort(-np.where(np.isfinite(mean_d), mean_d, -np.inf))[:k]
    print(f"current top-{k}: median tokens {np.median(n[cur_top]):.0f}, by domain",
          {d: int((dom[cur_top] == d).sum()) for d in np.unique(dom)})
    for name, v in variants.items():
        print(f"  {name:38s} precision@{k} {prec(v):.3f}  @10% {prec(v, len(base)//10):.3f}")


extra = sys.argv[1:]
if extra[:1] == ["--analyze"]:
    analyze(extra[1])
    sys.exit()

import torch  # noqa: E402 - the analysis alone needs no torch

from selectkit.models.lm import batch as lm_batch  # noqa: E402
from selectkit.models.loader import load_model  # noqa: E402
from selectkit.recipe.spec import ModelSpec  # noqa: E402
from selectkit_plugins.passes.unlearn import ascend  # noqa: E402

rows = [json.loads(x) for x in (ROOT / "recipes/data/pool.jsonl").read_text().splitlines()]
by = {}
for r in rows:
    by.setdefault(r["domain"], []).append(r)
target = [r["text"] for r in by["reviews"][:100]]
pool = by["reviews"][100:] + by["news"][:155] + by["politics"][:155] + by["drama"][:155]
texts = [r["text"] for r in pool]
dom = np.array([r["domain"] for r in pool])
is_rev = dom == "reviews"
print(len(pool), is_rev.mean())
torch.set_num_threads(2)
lm = load_model(ModelSpec(path="models/tiny-lm", kind="causal-lm", device="cpu"), ROOT / "recipes")
model, tok = lm.model, lm.tokenizer
for p in model.parameters():
    p.requires_grad_(True)
start = {k: v.detach().clone() for k, v in model.state_dict().items()}

def token_lp(texts):
    out = [None] * len(texts)
    order = np.argsort([len(t) for t in texts])
    with torch.no_grad():
        for s in range(0, len(texts), 32):
            idx = order[s:s+32]
            b = lm_batch(tok, [texts[i] for i in idx], None, lm.max_length)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, b["input_ids"][:, 1:, None])[..., 0]
            n = b["attention_mask"].sum(1) - 1
            for j, i in enumerate(idx):
                out[i] = lp[j, :n[j]].double().numpy()
    return out

def run(name, ascent_texts, **kw):
    t0 = time.perf_counter()
    base = token_lp(texts)
    reads = []
    ascend(model, tok, ascent_texts, np.random.default_rng(0), max_length=lm.max_length,
           on_eval=lambda s: reads.append((s, token_lp(texts))), **kw)
    with torch.no_grad():
        model.load_state_dict(start)
    dt = time.perf_counter() - t0
    np.savez(ROOT / f"benchmarks/.work/untrac_{name}.npz", base=np.array(base, dtype=object),
             steps=np.array([s for s, _ in reads]), reads=np.array([r for _, r in reads], dtype=object),
             domain=dom, seconds=dt, allow_pickle=True)
    print(name, f"{dt:.1f}s", flush=True)

configs = {
  "default": dict(optimizer="sgd", lr=3e-4, steps=50, batch_size=8, grad_accum=32, eval_every=10),
}
if "small" in extra:
    configs = {"b8a4_lr3e-4": dict(optimizer="sgd", lr=3e-4, steps=50, batch_size=8, grad_accum=4, eval_every=10),
               "b8a4_lr3e-3": dict(optimizer="sgd", lr=3e-3, steps=50, batch_size=8, grad_accum=4, eval_every=10),
               "b8a4_lr3e-5": dict(optimizer="sgd", lr=3e-5, steps=50, batch_size=8, grad_accum=4, eval_every=10)}
if "control" in extra:
    rng = np.random.default_rng(1)
    ctrl = [texts[i] for i in rng.choice(len(texts), 100, replace=False)]
    configs = {"control_default": dict(optimizer="sgd", lr=3e-4, steps=50, batch_size=8, grad_accum=32,
                                       eval_every=10)}
    for n, c in configs.items():
        run(n, ctrl, **c)
    sys.exit()
for n, c in configs.items():
    run(n, target, **c)
    analyze(ROOT / f"benchmarks/.work/untrac_{n}.npz")
