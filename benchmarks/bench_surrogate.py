"""Oracle vs surrogate: what a `surrogate:` saves (model-pass rows, planned and measured time) and
how well it agrees with the full oracle, at several label fractions.

The oracle is gradient influence (`influence.tracin`, cosine, on the demo's tiny LM, the model
itself as its one checkpoint) toward the demo's politics target; the surrogate's features are
the same LM's mean-pooled embeddings (one forward pass over the pool, which the full run does
not need: it is the surrogate's fixed cost). The pool is the demo pool repeated with fresh ids
up to --rows. For each size the script plans both recipes (`selectkit plan`'s estimates: rows
and seconds of every model pass), then, unless --plan-only, runs the full oracle once and the
surrogate at each label fraction, and reports held-out Spearman / precision@budget (from the
manifest) and the overlap of the surrogate's top-10% with the full oracle's.

    .venv/bin/python benchmarks/bench_surrogate.py --rows 10000 --fractions 1 5 20
    .venv/bin/python benchmarks/bench_surrogate.py --rows 100000 --plan-only
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"

RECIPE = """
selectkit: 1
name: bench-surrogate
seed: 0
data:
  pool: {{path: {pool}, id: id}}
  targets:
    politics: {{path: {data}/target_politics.jsonl, limit: 32}}
models:
  lm: {{path: {models}/tiny-lm, kind: causal-lm, max_length: 48}}
scores:
  emb: {{use: embedding, model: lm, targets: []}}
  infl:
    use: influence.tracin
    model: lm
    targets: [politics]
    with: {{proj_dim: 256, normalize: true, aggregate: mean}}
    {surrogate}
select:
  - use: topk
    with: {{score: infl.politics, budget: 10%}}
output: {{dir: {out}, report: false}}
"""


def make_pool(rows: int, folder: Path) -> Path:
    lines = (DATA / "pool.jsonl").read_text(encoding="utf-8").splitlines()
    path = folder / f"pool-{rows}.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            row = json.loads(lines[i % len(lines)])
            row["id"] = f"{row['id']}-{i // len(lines)}"
            out.write(json.dumps(row) + "\n")
    return path


def recipe(folder: Path, pool: Path, name: str, surrogate: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(RECIPE.format(pool=pool, data=DATA, models=ROOT / "recipes" / "models",
                                  surrogate=f"surrogate: {surrogate}" if surrogate else "", out=folder / f"out-{name}"))
    return path


def planned(path: Path) -> dict:
    from selectkit import api

    plan = api.plan(path)
    rows, seconds = {}, 0.0
    for step in plan.of_kind("pass"):
        examples = step.estimate.examples if step.estimate is not None else None
        rows[step.label] = examples
        if step.estimate is not None and step.estimate.seconds:
            seconds += step.estimate.seconds
    gradient_rows = sum(v or 0 for k, v in rows.items() if k.startswith("gradient") and "politics" not in k)
    return {"pass_seconds": round(seconds, 1), "gradient_rows": gradient_rows, "passes": rows}


def run(path: Path) -> tuple[float, dict, object]:
    from selectkit import api

    started = time.perf_counter()
    output = api.run(path)
    seconds = time.perf_counter() - started
    return seconds, json.loads(output.files["manifest"].read_text()), output


def step_seconds(manifest: dict) -> dict:
    """Measured seconds of the steps that matter: the oracle's pool/sample gradients, the features'
    forward pass, the surrogate fit (a cached step counts 0)."""
    out = {"oracle_pass_s": 0.0, "features_pass_s": 0.0, "fit_s": 0.0}
    for s in manifest["stages"]:
        seconds = s["seconds"] if s["status"] != "cached" else 0.0
        label = s["label"]
        if s["kind"] == "model-pass" and label.startswith("gradient") and "politics" not in label:
            out["oracle_pass_s"] += seconds
        elif s["kind"] == "model-pass" and label.startswith("forward"):
            out["features_pass_s"] += seconds
        elif s["kind"] == "score" and "surrogate" in label:
            out["fit_s"] += seconds
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1, 5, 20], help="label percentages")
    parser.add_argument("--model", default="ridge", choices=["ridge", "knn", "mlp"])
    parser.add_argument("--plan-only", action="store_true", help="planned costs only (no model runs)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, help="keep pools, recipes and the cache here (default: a temp folder)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.work or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["SELECTKIT_CACHE_DIR"] = str(folder / "cache")
        for rows in args.rows:
            pool = make_pool(rows, folder)
            full = recipe(folder, pool, f"full-{rows}")
            entry = {"rows": rows, "full": planned(full), "surrogates": []}
            print(f"\n== {rows:,} rows: full oracle plans {entry['full']['gradient_rows']:,} gradient rows, "
                  f"≈ {entry['full']['pass_seconds']} s of model passes", flush=True)
            if not args.plan_only:
                # the target's gradients are shared by every run (cached by the first); the features'
                # forward pass by every surrogate run: its seconds show in the first one only
                seconds, manifest, out = run(full)
                entry["full"].update(seconds=round(seconds, 1), **step_seconds(manifest))
                full_top = set(out.result.pool.ids.gather(out.result.ranking).to_list())
                print(f"   full oracle run: {json.dumps({k: v for k, v in entry['full'].items() if k != 'passes'})}",
                      flush=True)
            for pct in args.fractions:
                spec = f"{{features: emb, model: {args.model}, labels: {pct:g}%, holdout: 20%}}"
                path = recipe(folder, pool, f"sur-{rows}-{pct:g}", spec)
                item = {"labels_pct": pct, **planned(path)}
                if not args.plan_only:
                    seconds, manifest, out = run(path)
                    report = manifest["surrogates"]["infl"]
                    agreement = next(iter(report["agreement"].values()), {})
                    top = set(out.result.pool.ids.gather(out.result.ranking).to_list())
                    item.update(seconds=round(seconds, 1), **step_seconds(manifest), labels=report["labels"],
                                holdout=report["holdout"],
                                spearman=agreement.get("spearman"), pearson=agreement.get("pearson"),
                                precision_at_budget=agreement.get("precision_at_budget"),
                                overlap_with_full=round(len(top & full_top) / max(1, len(full_top)), 3))
                entry["surrogates"].append(item)
                print(f"   {pct:g}% labels: {json.dumps({k: v for k, v in item.items() if k != 'passes'})}",
                      flush=True)
            results.append(entry)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
