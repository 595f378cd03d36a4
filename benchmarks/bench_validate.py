"""Cold-start cost of `selectkit validate` against `python -c pass` and `python -c "import torch"`
(interleaved, medians), and proof that torch, numpy and the model libraries stay unloaded.

    .venv/bin/python benchmarks/bench_validate.py [--repeats 7] [--one]

Goal (issue 20): validate of every shipped recipe costs at most 0.4x `import torch`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "numpy", "ot", "sklearn", "datasets")
PROBE = f"""import sys, runpy
sys.argv = ["selectkit", "validate", *sys.argv[1:]]
try:
    runpy.run_module("selectkit", run_name="__main__")
except SystemExit:
    pass
loaded = [m for m in {HEAVY!r} if (m + "._core" if m == "numpy" else m) in sys.modules]  # numpy: lazy until used
print("heavy:", " ".join(loaded))
"""


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
    torch = [sys.executable, "-c", "import torch"]
    rows = [(wall(baseline), wall(torch), wall(validate)) for _ in range(args.repeats)]  # interleaved: same load
    base, torch_s, val = (statistics.median(r[i] for r in rows) for i in range(3))
    probe = subprocess.run([sys.executable, "-c", PROBE, *recipes], capture_output=True, text=True)
    heavy = probe.stdout.rsplit("heavy:", 1)[-1].strip()
    print(f"recipes validated: {len(recipes)}")
    print(f"python -c pass         median {base * 1000:7.1f} ms")
    print(f"python -c import torch median {torch_s * 1000:7.1f} ms")
    print(f"selectkit validate     median {val * 1000:7.1f} ms   {val / torch_s:4.2f}x import torch (goal <= 0.4x)")
    print(f"heavy modules imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
