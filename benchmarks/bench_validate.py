"""Cold-start cost of `selectkit validate` against `python -c pass` and `python -c "import torch"`
(interleaved, medians), and proof that torch, numpy and the model libraries stay unloaded.

    .venv/bin/python benchmarks/bench_validate.py [--repeats 7] [--one] [--against OTHER_CHECKOUT]

`--against` times another checkout (its own `.venv`, e.g. a `git worktree` of an older commit) in the
same interleaved rounds, each run from its own folder (`-m` puts the working folder first on sys.path).

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


def wall(cmd: list[str], cwd: Path = ROOT) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True, cwd=cwd)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--one", action="store_true", help="validate quickstart.yaml alone (default: every recipe)")
    parser.add_argument("--against", type=Path, help="another checkout with its own .venv, timed alongside")
    args = parser.parse_args()
    # steady state: bytecode cached, as after a user's first run (this machine sets
    # PYTHONDONTWRITEBYTECODE, which would otherwise recompile every module on each start)
    trees = [(ROOT, Path(sys.executable))] + ([(args.against, args.against / ".venv" / "bin" / "python")]
                                             if args.against else [])
    commands = []
    for root, python in trees:
        subprocess.run([python, "-m", "compileall", "-q", str(root / "selectkit"), str(root / "selectkit_plugins")],
                       check=True)
        recipes = [str(root / "recipes" / "quickstart.yaml")] if args.one else sorted(
            str(p) for p in (root / "recipes").glob("*.yaml"))
        commands.append(([str(python), "-m", "selectkit", "validate", *recipes], root))
    recipes = commands[0][0][4:]
    baseline = [sys.executable, "-c", "pass"]
    torch = [sys.executable, "-c", "import torch"]
    rows = [(wall(baseline), wall(torch), *(wall(cmd, cwd) for cmd, cwd in commands))  # interleaved: same load
            for _ in range(args.repeats)]
    base, torch_s, val, *other = (statistics.median(r[i] for r in rows) for i in range(len(rows[0])))
    probe = subprocess.run([sys.executable, "-c", PROBE, *recipes], capture_output=True, text=True)
    heavy = probe.stdout.rsplit("heavy:", 1)[-1].strip()
    print(f"recipes validated: {len(recipes)}")
    print(f"python -c pass         median {base * 1000:7.1f} ms")
    print(f"python -c import torch median {torch_s * 1000:7.1f} ms")
    print(f"selectkit validate     median {val * 1000:7.1f} ms   {val / torch_s:4.2f}x import torch (goal <= 0.4x)")
    if other:
        print(f"  {args.against}: median {other[0] * 1000:7.1f} ms   {other[0] / torch_s:4.2f}x import torch")
    print(f"heavy modules imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
