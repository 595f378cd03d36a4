"""`selectkit eval`: wall time on recipes/eval_quickstart.yaml at its default settings, and the verdict
distribution of random vs random over seeds (a `random` selector's subset evaluated against the random
arms: the selection path itself, so every verdict that is not "inconclusive" is a false positive).

    .venv/bin/python benchmarks/bench_eval.py                      # quickstart + 20 random seeds
    .venv/bin/python benchmarks/bench_eval.py --seeds 10 --first-seed 10 --skip-quickstart
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANDOM_RECIPE = """selectkit: 1
name: random-{seed}
seed: {seed}
data:
  pool: {{path: {data}/pool.jsonl, id: id}}
  targets:
    politics: {{path: {data}/target_politics.jsonl}}
scores:
  n: {{use: length}}
select:
  - use: random
    with: {{budget: 10%}}
output: {{dir: {out}/random-{seed}, summarize_by: domain}}
evaluate: {{stratified: false, random_vs_random: false}}
"""


def evaluate(recipe: Path, out: Path, cache: Path) -> tuple[float, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SELECTKIT_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "selectkit", "eval", str(recipe), "--out", str(out), "--format",
                           "json", "-q"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr)
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    figures: dict = {"load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if not args.skip_quickstart:
            seconds, result = evaluate(ROOT / "recipes" / "eval_quickstart.yaml", tmp_path / "qs", tmp_path / "cache")
            politics = result["sets"]["politics"]
            figures["quickstart"] = {"wall_s": round(seconds, 1), "training_s": result["seconds"]["training"],
                                     "verdicts": result["verdicts"], "bpb": politics["bpb"],
                                     **{k: politics[k] for k in ("selection_vs_random", "selection_vs_stratified",
                                                                 "random_vs_random")},
                                     "pool_sample": result["sets"]["pool sample"]["selection_vs_random"]}
            c = politics["selection_vs_random"]
            print(f"quickstart: {seconds:.0f} s wall ({result['seconds']['training']:.0f} s training), politics "
                  f"selection - random {c['difference']:+.4f} bpb [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] "
                  f"-> {c['verdict']}", flush=True)
        verdicts, rows = collections.Counter(), []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            recipe = tmp_path / f"random-{seed}.yaml"
            recipe.write_text(RANDOM_RECIPE.format(seed=seed, data=ROOT / "recipes" / "data", out=tmp_path))
            seconds, result = evaluate(recipe, tmp_path / f"eval-{seed}", tmp_path / "cache")
            c = result["sets"]["politics"]["selection_vs_random"]
            verdicts[c["verdict"]] += 1
            rows.append({"seed": seed, "wall_s": round(seconds, 1), **c})
            print(f"random seed {seed:>2}: {c['difference']:+.4f} bpb [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] "
                  f"p={c['p_value']:.3g} -> {c['verdict']} ({seconds:.0f} s)", flush=True)
        if rows:
            figures["random_vs_random"] = {"seeds": len(rows), "verdicts": dict(verdicts),
                                           "inconclusive_share": verdicts["inconclusive"] / len(rows),
                                           "permutation_p_below_0.05": sum(r["p_value"] < 0.05 for r in rows),
                                           "runs": rows}
            print(f"random vs random over {len(rows)} seeds: {dict(verdicts)} "
                  f"({verdicts['inconclusive'] / len(rows):.0%} inconclusive; permutation p < 0.05 in "
                  f"{figures['random_vs_random']['permutation_p_below_0.05']})")
    figures["load_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
