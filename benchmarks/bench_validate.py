"""Cold-start cost of `selectkit validate` against `python -c pass`, and proof torch stays unloaded.

    .venv/bin/python benchmarks/bench_validate.py [--repeats 7] [--one]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--one", action="store_true", help="validate quickstart.yaml alone (default: every recipe)")
    args = parser.parse_args()
    # steady state: bytecode cached, as after a user's first run (this machine sets
    # PYTHONDONTWRITEBYTECODE, which would otherwise recompile every module on each start)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "selectkit"), str(ROOT / "selectkit_plugins")],
                   check=True)
    recipes = [str(ROOT / "recipes" / "quickstart.yaml")] if args.one else sorted(
        str(p) for p in (ROOT / "recipes").glob("*.yaml"))
    validate = [sys.executable, "-m", "selectkit", "validate", *recipes]
    baseline = [sys.executable, "-c", "pass"]
    pairs = [(wall(baseline), wall(validate)) for _ in range(args.repeats)]  # interleaved: same load
    base = statistics.median(p[0] for p in pairs)
    val = statistics.median(p[1] for p in pairs)
    probe = subprocess.run([sys.executable, "-X", "importtime", "-m", "selectkit", "validate", *recipes],
                           capture_output=True, text=True)
    heavy = sorted({line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines()
                    if line.rsplit("|", 1)[-1].strip() in {"torch", "transformers", "ot", "sklearn", "datasets"}})
    print(f"recipes validated: {len(recipes)}")
    print(f"python -c pass        median {base * 1000:7.1f} ms")
    print(f"selectkit validate    median {val * 1000:7.1f} ms   ratio {val / base:5.1f}x   "
          f"overhead {(val - base) * 1000:6.1f} ms (target < 500 ms absolute)")
    print(f"heavy modules imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
