"""Plan estimates against measured time: every shipped recipe is planned (fresh cache) and run,
and each model step's estimated seconds are set beside the seconds the manifest records.

    .venv/bin/python benchmarks/bench_estimates.py                 # every recipe in recipes/
    .venv/bin/python benchmarks/bench_estimates.py --only less perplexity_filter --limit 600

Goal (issue 9): within 2x for model passes on CPU. The CPU figure the estimates use is
`selectkit.planning.estimates.CPU_TFLOPS_PER_CORE` (calibrated with this script).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from selectkit import api

    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    if args.only:
        recipes = [r for r in recipes if r.stem in args.only]
    rows = []
    for recipe in recipes:
        work = Path(tempfile.mkdtemp(prefix="bench-estimates-"))
        try:
            plan = api.plan(recipe, cache_dir=work / "cache", out_dir=work / "out", limit=args.limit)
            passes = {s.id: s for s in plan.of_kind("pass") if s.estimate is not None}
            if not passes:
                continue
            extra = ["--limit", str(args.limit)] if args.limit else []
            env = {**os.environ, "SELECTKIT_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
            result = subprocess.run([sys.executable, "-m", "selectkit", "run", "-q", str(recipe), "--out",
                                     str(work / "out"), *extra], env=env, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"{recipe.stem}: run failed\n{result.stderr[-2000:]}")
                continue
            stages = {s["step"]: s for s in json.loads((work / "out" / "manifest.json").read_text())["stages"]}
            for step_id, step in passes.items():
                measured = stages.get(step_id, {}).get("seconds")
                estimate = step.estimate.seconds
                if measured is None or estimate is None or stages[step_id]["status"] == "cached":
                    continue
                rows.append({"recipe": recipe.stem, "step": step_id, "work": step.estimate.what,
                             "estimated_s": estimate, "measured_s": measured, "ratio": measured / estimate})
                print(f"{recipe.stem:<20} {step_id:<58} est {estimate:8.2f} s  measured {measured:8.2f} s  "
                      f"ratio {measured / estimate:5.2f}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if rows:
        ratios = sorted(r["ratio"] for r in rows)
        print(f"\n{len(rows)} model steps: median ratio {ratios[len(ratios) // 2]:.2f}, "
              f"range {ratios[0]:.2f}-{ratios[-1]:.2f}; within 2x: {sum(0.5 <= r <= 2 for r in ratios)}/{len(rows)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
