"""The peers side by side against one shared LDS ground truth (issue 22, item 5), at two sizes.

--size reduced (default; the README's first LDS tables): compare_peers.py's tiny byte-level Llama
(hidden 32, 2 layers, 45,216 parameters) and its 128 train / 16 query texts (label tokens = the
response). --size issue: the issue's "size where the algorithms decide", a byte-level Llama of
12,097,920 parameters (hidden 384, 8 layers, MLP 768, 60 full-parameter pretraining steps on the
synthetic task mixture: tests/influence_fixtures.pretrained_lm), 320 train / 32 query texts from the
same generators (prefixes: the reduced texts are the first 128 / 16), LoRA r=1 on q,v (12,288 parameters).
Each size has its own work folder (benchmarks/.work/peers, benchmarks/.work/peers-issue) and the size's
settings are in the ground truth's cache key, so one size's cache is never another's.

Why that size (measured 2026-12-06 on the 2-core machine at load average 3-8 from other agents): one
retrain is 4 epochs over an alpha = 0.5 subset; the texts are <= 27 bytes, so the cost is the parameter
count times 160 texts x 4 epochs. At 9.15M parameters (6 layers) one epoch of 150 texts took 3.0 CPU s
(6.2 s wall) with 1 thread and 17.3 CPU s (29.0 s wall) with 2: two OpenMP threads stall on this loaded
machine, so the ground truth runs with PEERS_THREADS threads and PEERS_THREADS=1 is the setting. At 8
layers the scored LoRA (320 texts x 4 epochs) took 22.6 CPU s, so a retrain is ~11-12 CPU s, K = 64
about 13 CPU-minutes, 15-35 minutes wall at 40-90 % of a core: within the issue's "about an hour on 2
cores" with room for the load (measured after: 12.6 CPU s per retrain, K = 128 in 26.95 CPU-minutes,
28 min wall at load 3-5). K = 64 or 128 rather than the issue's ~32: the bootstrap CI over subsets
narrows as 1/sqrt(K); at K = 64 the unpaired CIs still overlapped (+-0.045), at K = 128 the paired
differences separate EK-FAC, traker's TRAK and the gradient-dot-product methods (benchmarks/README.md);
320 texts are the issue's "few hundred"; 32 query examples halve the
per-query noise of 16. Larger models (SmolLM2-135M at max length 32: ~28 min per retrain) are out of
reach on CPU (benchmarks/README.md).

The model scored is a LoRA (r=1 on q,v, alpha 4, no dropout) *trained* on all train texts from the
base, not compare_peers' random LoRA, because LDS asks whether scores at the trained model predict
what retraining does.

Ground truth (computed once, cached in <work folder>/lds/ground_truth.npz, resumable per subset: a
killed run resumes, a larger --subsets extends it): K keyed alpha-subsets of the train texts
(selectkit's own draws: `keyed_subset` with `planning.retrain.draws`, alpha = 0.5); for each, the same
LoRA retrained from the same base with selectkit's retraining loop
(`selectkit_plugins.lib.influence.warmup.Warmup`, the one loop the warmup and `evaluate.lds` retrains
run through, same seed so the same initialisation), then every query example's loss (mean CE over its
label tokens). Its CPU time (user + system of this process) is recorded with it.

Each (library, method) of compare_peers.JOBS runs in its own venv and subprocess on the trained LoRA
(compare_peers.run_job, same workers); the scores (train x query, positive = helpful) go through
selectkit.evaluation.lds: LDS = mean over query examples of Spearman(-sum of the subset's scores,
measured loss) over subsets, a percentile bootstrap CI over subsets, and the keyed random control.
At the reduced size the explicit inverse-GGN scores of compare_peers.reference (damping 0.01,
float64) are a row too. At the issue size they are not computed: the explicit Gauss-Newton is p x p
for p = 12,288 LoRA parameters (1.2 GB in float64), built column block by column block, 96 blocks of
128, each a double-vjp pass over all 320 train texts batched 128 wide at 12M parameters in float64.
Estimate (not run): a forward+backward of one text is ~14 ms here (the scored LoRA's 1,280 in 22.6
CPU s), float64 and the double vjp ~6x that, x 128 vectors x 320 texts = ~1 CPU-hour per block,
~90 CPU-hours in all, against ~13 CPU-minutes for the ground truth.

Peer venvs: see compare_peers.py's docstring (benchmarks/.work/{kf,dattri,trak}).

    .venv/bin/python benchmarks/compare_peers_lds.py --subsets 64 --repeats 1
    .venv/bin/python benchmarks/compare_peers_lds.py --subsets 64 --only selectkit,dattri --json out.json
    PEERS_THREADS=1 .venv/bin/python benchmarks/compare_peers_lds.py --size issue --prepare   # model: ~1.5 min
    PEERS_THREADS=1 .venv/bin/python benchmarks/compare_peers_lds.py --size issue --subsets 128 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_peers as cp  # noqa: E402

ALPHA = 0.5
SEED = 0
BOOTSTRAP = 1000
# the retrain's TrainSpec (selectkit.recipe.spec): the scored LoRA and every subset's retrain use it
TRAIN = {"epochs": 4, "learning_rate": 2e-2, "warmup_ratio": 0.03, "weight_decay": 0.0, "batch_size": 16,
         "micro_batch_size": 16, "lora": {"r": cp.LORA["r"], "alpha": cp.LORA["lora_alpha"], "dropout": 0.0,
                                           "target_modules": cp.LORA["target_modules"]}}


# (size, library, method) not run, with the measured reason: a rerun would only repeat it (and an OOM kill on a
# shared machine can take another process with it)
KNOWN_FAILURES = {
    ("issue", "dattri", "DataInf"): "killed by the kernel's OOM killer at 20.5 GB anonymous RSS (24 GB machine), "
                                    "memory growing batch by batch in IFAttributorDataInf.attribute's train loop "
                                    "(7 of 10 batches of 32 done); measured 2026-12-07",
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def retrain(folder: Path, train_rows: list[dict]):
    """The LoRA trained from the base in `folder`/lm on `train_rows` by selectkit's Warmup loop."""
    import torch
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    from selectkit.recipe.spec import TrainSpec
    from selectkit_plugins.lib.influence.warmup import Warmup

    spec = TrainSpec.model_validate(TRAIN)
    base = AutoModelForCausalLM.from_pretrained(folder / "lm", dtype=torch.float32, attn_implementation="eager")
    run = Warmup(base, ByT5Tokenizer(), [r["text"] for r in train_rows], spec, seed=SEED, max_length=40,
                 prompts=[r["prompt"] for r in train_rows], target_modules=list(spec.lora.target_modules))
    for epoch in range(spec.epochs):
        run.train_epoch(epoch)
    return run.model.eval()


def query_losses(model, query: dict):
    import torch

    from selectkit_plugins.lib.influence.grads import lm_loss

    with torch.no_grad():
        return lm_loss(model, query).double().numpy()


def subset_masks(k: int, n: int):
    """(k, n) masks of selectkit's keyed LDS subsets of the n train rows (ids 0..n-1)."""
    import numpy as np

    from selectkit.contract.keyed_random import keyed_subset, row_keys
    from selectkit.planning.retrain import draws

    spec = SimpleNamespace(sample=n, fraction=ALPHA)
    keys = row_keys(np.arange(n))
    masks = np.zeros((k, n), dtype=bool)
    for i in range(k):
        masks[i, keyed_subset(keys, SEED, draws(spec, i))] = True
    return masks, keys


def scored_model(folder: Path, lds: Path, size: cp.Size) -> float:
    """Train the scored LoRA on all train texts into `lds` (lm and data.pt linked from `folder`), with
    its reference scores; returns the CPU seconds it took."""
    import numpy as np
    import torch

    lds.mkdir(parents=True, exist_ok=True)
    for name in ("lm", "data.pt"):
        if not (lds / name).exists():
            (lds / name).symlink_to(folder / name)
    start = cpu_seconds()
    train, _ = cp.texts(size)
    model = retrain(folder, train)
    trained = {n.split("base_model.model.", 1)[1]: p.detach().clone()
               for n, p in model.named_parameters() if p.requires_grad}
    names = torch.load(folder / "lora.pt")  # the parameter names compare_peers.load expects
    torch.save({n: trained[n.split("base_model.model.", 1)[1]] for n in names}, lds / "lora.pt")
    if size.reference:
        np.save(lds / "reference.npy", cp.reference(lds))
    (lds / "scored.json").write_text(json.dumps(size.__dict__, sort_keys=True))
    return cpu_seconds() - start


def ground_truth(folder: Path, lds: Path, k: int, size: cp.Size) -> dict:
    """Masks (k, train), losses (k, query) and CPU seconds, cached in lds/ground_truth.npz keyed by the
    training and size settings; subsets already there are reused (a killed run resumes)."""
    import numpy as np
    import torch

    torch.set_num_threads(cp.THREADS)
    key = hashlib.sha256(json.dumps([TRAIN, SEED, ALPHA, size.__dict__], sort_keys=True).encode()).hexdigest()[:12]
    path = lds / "ground_truth.npz"
    have = {"loss": np.zeros((0, size.query)), "cpu_s": np.zeros(0), "wall_s": np.zeros(0)}
    if path.exists():
        z = np.load(path)
        if str(z["key"]) == key:
            have = {n: z[n] for n in have}
    train, _ = cp.texts(size)
    query = torch.load(folder / "data.pt")["query"]
    masks, _ = subset_masks(k, len(train))
    loss, cpu, wall = list(have["loss"]), list(have["cpu_s"]), list(have["wall_s"])
    for i in range(len(loss), k):
        c, w = cpu_seconds(), time.perf_counter()
        model = retrain(folder, [r for r, m in zip(train, masks[i]) if m])
        loss.append(query_losses(model, query))
        cpu.append(cpu_seconds() - c)
        wall.append(time.perf_counter() - w)
        np.savez(path, key=key, masks=masks[:i + 1], loss=np.array(loss), cpu_s=np.array(cpu), wall_s=np.array(wall))
        print(f"  retrain {i + 1}/{k}: {wall[-1]:.1f}s wall, {cpu[-1]:.1f}s CPU", flush=True)
    return {"masks": masks, "loss": np.array(loss)[:k], "cpu_s": np.array(cpu)[:k], "wall_s": np.array(wall)[:k]}


def grad_phase(phases: dict) -> tuple[str, float]:
    """The phase that extracts per-example gradients (all of a method's work where it has no such phase)."""
    for name in ("grads", "featurize"):
        if name in phases:
            return name, phases[name]
    return "total", sum(phases.values())


def paired_difference(pred_a, pred_b, loss, reps: int = BOOTSTRAP, seed: int = SEED) -> dict:
    """LDS(a) - LDS(b) and a percentile CI from resampling the subsets once for both (paired: the two
    scores share every resample, so the subsets' common noise cancels, unlike comparing two CIs)."""
    import warnings

    import numpy as np

    from selectkit.evaluation.lds import lds
    from selectkit.evaluation.ranks import spearman

    k = loss.shape[0]
    rng = np.random.default_rng([seed, 0xD1FF])
    values = []
    for _ in range(reps):
        idx = rng.integers(0, k, size=k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            values.append(np.nanmean(spearman(pred_a[idx], loss[idx], axis=0))
                          - np.nanmean(spearman(pred_b[idx], loss[idx], axis=0)))
    lo, hi = np.quantile(np.array(values), [0.025, 0.975])
    return {"d": round(lds(pred_a, loss) - lds(pred_b, loss), 4), "ci": [round(float(lo), 4), round(float(hi), 4)]}


def paired_rows(rows: list[dict], preds: dict, loss) -> list[str]:
    """Each row's paired LDS difference from selectkit's EK-FAC, and each peer's from selectkit's same method
    (stored in the rows as delta_vs_ekfac / delta_vs_selectkit); returns the printed lines."""
    lines = []
    base = preds.get(("selectkit", "EK-FAC"))
    for r in rows:
        key = (r["library"], r["method"])
        if base is not None and key != ("selectkit", "EK-FAC") and key in preds:
            r["delta_vs_ekfac"] = paired_difference(preds[key], base, loss)
        ours = preds.get(("selectkit", r["method"]))
        if r["library"] not in ("selectkit", "reference") and ours is not None:
            r["delta_vs_selectkit"] = paired_difference(preds[key], ours, loss)
        parts = [f"{name} {d['d']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
                 for name, d in (("vs selectkit EK-FAC", r.get("delta_vs_ekfac")),
                                 ("vs selectkit same method", r.get("delta_vs_selectkit"))) if d]
        if parts:
            lines.append(f"{r['library']:12s} {r['method']:22s} " + "; ".join(parts))
    return lines


def uptime() -> str:
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def model_sizes(folder: Path) -> tuple[int, int]:
    """(parameters of the base model, LoRA parameters scored)."""
    model, _, _ = cp.load(folder)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return sum(p.numel() for p in model.parameters()) - lora, lora


def main() -> None:
    import numpy as np
    from scipy.stats import spearmanr

    from selectkit.evaluation.lds import control, measure, predictions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(cp.SIZES), default="reduced",
                    help="model and data size (reduced: the tables' tiny model; issue: issue 22's, see above)")
    ap.add_argument("--subsets", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", help="comma-separated libraries to run (default: all available)")
    ap.add_argument("--prepare", action="store_true", help="only build the model, data and scored LoRA")
    ap.add_argument("--retry-failures", action="store_true", help="also run the jobs of KNOWN_FAILURES")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    size = cp.SIZES[args.size]
    folder = size.folder()
    lds = folder / "lds"
    settings = json.dumps(size.__dict__, sort_keys=True)
    start_uptime = uptime()
    if not (folder / "size.json").exists() or (folder / "size.json").read_text() != settings:
        folder.mkdir(parents=True, exist_ok=True)
        w = time.perf_counter()
        cp.setup(folder, size)
        print(f"model + data ({args.size}): {time.perf_counter() - w:.1f}s wall", flush=True)
    if not (lds / "scored.json").exists() or (lds / "scored.json").read_text() != settings:
        print(f"scored LoRA (all {size.train} texts){' + its reference' if size.reference else ''}: "
              f"{scored_model(folder, lds, size):.1f} CPU s", flush=True)
    base_params, lora_params = model_sizes(lds)
    print(f"model: {base_params:,} parameters, LoRA {lora_params:,}; {size.train} train / {size.query} query texts",
          flush=True)
    if args.prepare:
        return
    gt = ground_truth(folder, lds, args.subsets, size)
    masks, loss = gt["masks"], gt["loss"]
    k, m = loss.shape
    columns = np.arange(m)

    def lds_of(scores):
        return measure(predictions(scores, masks, columns), loss, BOOTSTRAP, SEED)

    ref = np.load(lds / "reference.npy") if size.reference else None
    rows, preds = [], {}
    if ref is not None:
        rows.append({"library": "reference", "method": "inverse GGN (explicit)", "phases": {}, "total_s": None,
                     "peak_mb": None, "lds": lds_of(ref)})
        preds["reference", "inverse GGN (explicit)"] = predictions(ref, masks, columns)
    only = set(args.only.split(",")) if args.only else None
    skipped = []
    for lib, method, python, extra in cp.JOBS:
        if only and lib not in only:
            continue
        if not python.exists() or (extra is not None and not extra.exists()):
            skipped.append(f"{lib} {method}: no venv at {extra or python.parent.parent}")
            continue
        if (args.size, lib, method) in KNOWN_FAILURES and not args.retry_failures:
            skipped.append(f"{lib} {method}: {KNOWN_FAILURES[args.size, lib, method]} (--retry-failures runs it)")
            continue
        runs, scores, err = cp.run_job(lib, method, python, extra, lds, args.repeats)
        if err:
            skipped.append(f"{lib} {method}: {err}")
            print(f"  {lib} {method} failed: {err}", flush=True)
            continue
        phases = {p: float(np.median([r["phases"][p] for r in runs])) for p in runs[0]["phases"]}
        name, secs = grad_phase(phases)
        row = {"library": lib, "method": method, "phases": phases, "total_s": sum(phases.values()),
               "peak_mb": float(np.median([r["peak_mb"] for r in runs])), "lds": lds_of(scores),
               "grad_phase": name, "examples_per_s": (scores.shape[0] + scores.shape[1]) / secs}
        if ref is not None:
            row["spearman_vs_reference"] = float(np.mean([spearmanr(scores[:, j], ref[:, j])[0] for j in range(m)]))
        rows.append(row)
        preds[lib, method] = predictions(scores, masks, columns)
        print(f"  {lib} {method}: {row['total_s']:.2f}s, LDS {row['lds']}", flush=True)
    ours = {r["method"]: r["total_s"] for r in rows if r["library"] == "selectkit"}
    for r in rows:
        if r["library"] not in ("selectkit", "reference") and r["method"] in ours:
            r["x_selectkit"] = r["total_s"] / ours[r["method"]]
    _, keys = subset_masks(1, masks.shape[1])
    random = control(masks, loss, keys, SEED, BOOTSTRAP)
    cpu_min = float(gt["cpu_s"].sum()) / 60
    print(f"\nmodel ({args.size}): byte-level Llama hidden {size.hidden}, {size.layers} layers, {base_params:,} "
          f"parameters ({size.steps} pretraining steps); LoRA r={cp.LORA['r']} on q,v: {lora_params:,} parameters; "
          f"{cp.THREADS} thread(s)")
    print(f"LDS ground truth: K={k} keyed alpha={ALPHA} subsets of {size.train} train texts, {m} query examples, "
          f"LoRA retrains ({TRAIN['epochs']} epochs, lr {TRAIN['learning_rate']}) by selectkit's Warmup loop: "
          f"{cpu_min:.2f} CPU-minutes ({gt['wall_s'].sum():.0f}s wall, {gt['cpu_s'].mean():.2f} CPU s per retrain); "
          f"bootstrap {BOOTSTRAP} over subsets; {args.repeats} repeat(s); "
          "ex/s = (train + query) / gradient phase (grads/featurize, else total); x sk = total / selectkit's")
    print(f"{'library':12s} {'method':22s} {'phases (s)':32s} {'total s':>8s} {'x sk':>6s} {'peak MB':>8s} "
          f"{'ex/s':>8s} {'LDS [95% CI]':>24s} {'vs ref':>7s}")
    for r in rows:
        ph = ", ".join(f"{p} {v:.2f}" for p, v in r["phases"].items()) or "-"
        e = r["lds"]
        ci = f"{e['lds']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]" if e["lds"] is not None else "n/a"
        tot = f"{r['total_s']:8.2f}" if r["total_s"] is not None else f"{'-':>8s}"
        x = f"{r['x_selectkit']:6.2f}" if "x_selectkit" in r else f"{'-':>6s}"
        mb = f"{r['peak_mb']:8.0f}" if r["peak_mb"] is not None else f"{'-':>8s}"
        eps = f"{r['examples_per_s']:8.1f}" if "examples_per_s" in r else f"{'-':>8s}"
        vs = f"{r['spearman_vs_reference']:7.3f}" if "spearman_vs_reference" in r else f"{'-':>7s}"
        print(f"{r['library']:12s} {r['method']:22s} {ph:32s} {tot} {x} {mb} {eps} {ci:>24s} {vs}")
    print(f"{'random':12s} {'control (keyed)':22s} {'-':32s} {'-':>8s} {'-':>6s} {'-':>8s} {'-':>8s} "
          f"{random['lds']:+.3f} [{random['ci'][0]:+.3f}, {random['ci'][1]:+.3f}]")
    if ref is None:
        print("reference: not computed at this size (see the docstring)")
    print("paired LDS differences (one bootstrap over subsets shared by both scores, 95% CI):")
    for line in paired_rows(rows, preds, loss):
        print(line)
    for s in skipped:
        print(f"skipped: {s}")
    end_uptime = uptime()
    print(f"uptime at start: {start_uptime}\nuptime at end: {end_uptime}")
    if args.json:
        args.json.write_text(json.dumps({"size": size.__dict__, "base_params": base_params,
                                         "lora_params": lora_params, "threads": cp.THREADS,
                                         "results": rows, "random": random, "skipped": skipped, "subsets": k,
                                         "ground_truth_cpu_minutes": cpu_min,
                                         "ground_truth_wall_s": float(gt["wall_s"].sum()),
                                         "ground_truth_cpu_s_per_retrain": float(gt["cpu_s"].mean()),
                                         "train": TRAIN, "uptime_start": start_uptime, "uptime_end": end_uptime},
                                        indent=1))


if __name__ == "__main__":
    main()
