"""`selectkit eval` on the recipe's own model (`evaluate.proxy.model`): the quickstart's DSIR selection
toward the political statements (10% of the demo pool), every arm a LoRA fine-tune of the tiny demo LM
from its base, the metric each held-out example's mean token loss. Run twice through
`selectkit eval --format json` on one cache: cold (the recipe and every arm trained) and warm (every arm
cached: the recipe's steps load, the held-out losses are measured again).

    .venv/bin/python benchmarks/bench_own_eval.py                          # 3 seed pairs, 4 arms, 1 epoch
    .venv/bin/python benchmarks/bench_own_eval.py --pairs 5 --epochs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_lds import run  # noqa: E402  (`selectkit eval --format json` in a fresh process, timed)

RECIPE = """selectkit: 1
name: own-eval
seed: 0
data:
  pool: {{path: {data}/pool.jsonl, id: id}}
  targets:
    politics: {{path: {data}/target_politics.jsonl}}
models:
  lm: {{path: {models}/tiny-lm, kind: causal-lm, max_length: 128}}
scores:
  dsir: {{use: dsir, targets: [politics]}}
  words: {{use: length, with: {{unit: tokens}}}}
select:
  - use: threshold
    with: {{score: words, min: 5}}
  - use: importance_resample
    with: {{score: dsir, budget: 10%}}
output: {{dir: {out}/own-eval, formats: [parquet], summarize_by: domain, report: false}}
evaluate:
  random_subsets: {pairs}
  proxy:
    model: lm
    train: {{epochs: {epochs}, learning_rate: {lr}, batch_size: 16, micro_batch_size: 16}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recipe = folder / "own_eval.yaml"
        recipe.write_text(RECIPE.format(data=ROOT / "recipes" / "data", models=ROOT / "recipes" / "models",
                                        out=folder / "out", pairs=args.pairs, epochs=args.epochs, lr=args.lr))
        rows = []
        for label in ("cold", "warm"):
            wall, result = run(recipe, folder / "cache")
            p = result["proxy"]
            rows.append({"run": label, "wall_s": round(wall, 1), "seconds": result["seconds"],
                         "arms": {"cached": p["arms_cached"], "trained": p["arms_trained"]},
                         "bytes_per_arm": p["bytes_per_arm"],
                         "loss": {name: s["loss"] for name, s in result["sets"].items()},
                         "versus": {name: {k: {f: s[k][f] for f in ("difference", "ci_low", "ci_high", "verdict")}
                                           for k in ("selection_vs_random", "selection_vs_stratified",
                                                     "random_vs_random") if k in s}
                                    for name, s in result["sets"].items()}})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
