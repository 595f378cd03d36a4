"""LDS against damping for selectkit's TRAK and EK-FAC, on `compare_peers_lds.py`'s cached ground truth.

Damping decides whether these scores mean anything: bergson warns that untuned damping gives LDS ~ 0,
and `selectkit eval`'s LDS warning names damping first. This shows the curve at one size, with the
recipes' own conventions:
- TRAK: lambda = d x trace(X^T X) / k (`influence.trak`'s `damping`, default 0.1);
- EK-FAC: d x mean(Lambda) (`influence.ekfac`'s default `damping: null` is 0.1 x mean(Lambda)).

Each method's gradients are computed once. TRAK reuses its features for every lambda. EK-FAC reuses
its factors, the fit's kept gradients and the queries' gradients, and only preconditions them again. Paired differences
against the default use one bootstrap over subsets, as in `compare_peers_lds.py`.

    PEERS_THREADS=1 .venv/bin/python benchmarks/compare_peers_lds.py --size issue --prepare   # if not cached
    PEERS_THREADS=1 .venv/bin/python benchmarks/sweep_damping_lds.py --size issue --subsets 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import compare_peers as cp  # noqa: E402
import compare_peers_lds as cpl  # noqa: E402

FACTORS = (0.001, 0.01, 0.1, 1.0, 10.0)
DEFAULT = 0.1


def main() -> None:
    import numpy as np
    import torch

    from selectkit.evaluation.lds import measure, predictions
    from selectkit_plugins.lib.influence.ekfac import fit_ekfac, gradient_matrices, kept_scores
    from selectkit_plugins.lib.influence.grads import GradientFeaturizer, linear_modules, lm_loss
    from selectkit_plugins.lib.influence.scores import trak

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(cp.SIZES), default="issue")
    ap.add_argument("--subsets", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("PEERS_THREADS", "1")))

    size = cp.SIZES[args.size]
    folder = size.folder()
    lds = folder / "lds"
    if not (lds / "scored.json").exists():
        sys.exit(f"no scored model in {lds}: run compare_peers_lds.py --size {args.size} --prepare first")
    gt = cpl.ground_truth(folder, lds, args.subsets, size)
    masks, loss = gt["masks"], gt["loss"]
    columns = np.arange(loss.shape[1])
    model, train, query = cp.load(lds)
    tb, qb = cp.batches(train, cp.BATCH), cp.batches(query, cp.BATCH)

    rows, preds = [], {}

    def record(method: str, factor: float, scores, seconds: float) -> None:
        pred = predictions(scores, masks, columns)
        preds[method, factor] = pred
        rows.append({"method": method, "damping": factor, "seconds": seconds,
                     "lds": measure(pred, loss, cpl.BOOTSTRAP, cpl.SEED)})
        print(f"  {method} damping {factor:g}: LDS {rows[-1]['lds']} ({seconds:.1f}s)", flush=True)

    start = time.perf_counter()
    feat = GradientFeaturizer(model, lm_loss, proj_dim=cp.PROJ_DIM)
    g = torch.cat([feat(b).features for b in tb]).double().numpy()
    q = torch.cat([feat(b).features for b in qb]).double().numpy()
    print(f"TRAK features k={cp.PROJ_DIM}: {time.perf_counter() - start:.1f}s", flush=True)
    for factor in FACTORS:
        t = time.perf_counter()
        record("TRAK", factor, trak([g], [q], damping=factor), time.perf_counter() - t)

    start = time.perf_counter()
    modules = linear_modules(model)
    layers = fit_ekfac(model, lm_loss, tb, modules)
    print(f"EK-FAC fit: {time.perf_counter() - start:.1f}s", flush=True)
    lam_mean = {n: float(layer.eigenvalues().mean()) for n, layer in layers.items()}
    blocks = list(gradient_matrices(model, lm_loss, modules, qb))  # the queries' one pass
    query = {n: torch.cat([b[n] for b in blocks]) for n in modules}
    for factor in FACTORS:  # damping per layer is factor x that layer's mean(Lambda), as the default's 0.1
        t = time.perf_counter()
        queries = {n: layers[n].precondition_matrix(query[n], factor * lam_mean[n]) for n in modules}
        record("EK-FAC", factor, kept_scores(layers, queries), time.perf_counter() - t)

    print(f"\nLDS against damping ({args.size} size, K={args.subsets}; TRAK: d x trace/k, EK-FAC: d x mean(Lambda) "
          f"per layer; default d = {DEFAULT}); paired = minus the default's, one bootstrap over subsets")
    print(f"{'method':8} {'d':>7} {'LDS [95% CI]':>26} {'paired vs default':>28}")
    for r in rows:
        base = preds[r["method"], DEFAULT]
        pair = (cpl.paired_difference(preds[r["method"], r["damping"]], base, loss)
                if r["damping"] != DEFAULT else None)
        r["paired_vs_default"] = pair
        ci = r["lds"]["ci"]
        text = "-" if pair is None else f"{pair['d']:+.3f} [{pair['ci'][0]:+.3f}, {pair['ci'][1]:+.3f}]"
        value = f"{r['lds']['lds']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        print(f"{r['method']:8} {r['damping']:>7g} {value:>26} {text:>28}")
    print(f"uptime: {cpl.uptime()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
