"""LDS (`evaluate.lds`) on the tiny demo LM: LESS toward the political statements against the keyed random
control, run twice through `selectkit eval --format json` on one cache: cold (the recipe's warmup and
gradients, the proxy arm, K LoRA retrains) and warm (every retrain and every retrain's held-out losses
cached: nothing of LDS is computed again).

    .venv/bin/python benchmarks/bench_lds.py                               # K=32, alpha=0.5, N=200
    .venv/bin/python benchmarks/bench_lds.py --subsets 16 --sample 100 --json out.json
    .venv/bin/python benchmarks/bench_lds.py --target film                 # a target the demo LM never saw
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

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """selectkit: 1
name: less-lds
seed: 0
data:
  pool: {{path: {data}/pool.jsonl, id: id}}
  targets:
    {target}: {{path: {data}/target_{target}.jsonl}}
models:
  lm:
    path: {models}/tiny-lm
    kind: causal-lm
    max_length: 128
    warmup: {{fraction: 0.05, epochs: 2, learning_rate: 2.0e-4, batch_size: 16, micro_batch_size: 8}}
scores:
  less:
    use: influence.less
    model: lm
    targets: [{target}]
    with: {{proj_dim: 1024, aggregate: mean}}
select:
  - use: topk
    with: {{score: less.{target}, budget: 5%}}
output: {{dir: {out}/less-lds, report: false}}
evaluate:
  random_subsets: 1
  stratified: false
  random_vs_random: false
  lds: {{subsets: {subsets}, fraction: {fraction}, sample: {sample}, bootstrap: 1000,
         train: {{epochs: {epochs}, learning_rate: {lr}, batch_size: 16, micro_batch_size: 16}}}}
"""


def run(recipe: Path, cache: Path) -> tuple[float, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SELECTKIT_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "selectkit", "eval", str(recipe), "--format", "json", "-q"],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr)
    return time.perf_counter() - started, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subsets", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--target", default="politics", choices=["politics", "film"],
                        help="politics: the statements the demo LM was trained on; film: text it never saw")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recipe = folder / "less_lds.yaml"
        recipe.write_text(RECIPE.format(data=ROOT / "recipes" / "data", models=ROOT / "recipes" / "models",
                                        out=folder / "out", subsets=args.subsets, fraction=args.fraction,
                                        sample=args.sample, epochs=args.epochs, lr=args.lr,
                                        target=args.target))
        rows = []
        for label in ("cold", "warm"):
            wall, result = run(recipe, folder / "cache")
            d = result["lds_details"]
            rows.append({"run": label, "wall_s": round(wall, 1), "lds_s": d["seconds"], "retrains": d["retrains"],
                         "losses": d.get("losses"), "lds": result["lds"], "examples": d["examples"]})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
