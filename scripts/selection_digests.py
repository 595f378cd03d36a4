"""sha256 of every shipped recipe's selection.parquet (and subset files), each run with a fresh cache:
a refactor that must not change any selection compares this output before and after.

    .venv/bin/python scripts/selection_digests.py > before.txt   # ... change ... then again > after.txt; diff
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    if len(sys.argv) > 1:
        recipes = [r for r in recipes if r.stem in sys.argv[1:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    failed = 0
    for recipe in recipes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "selectkit", "run", str(recipe), "-q", "--out", str(out),
                                   "--cache-dir", str(Path(tmp) / "cache")], capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - started
            if proc.returncode != 0:
                failed += 1
                print(f"{recipe.stem}: FAILED ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            for name in sorted(p.name for p in out.iterdir() if p.name.startswith(("selection", "subset"))):
                digest = hashlib.sha256((out / name).read_bytes()).hexdigest()[:16]
                print(f"{recipe.stem} {name} {digest}", flush=True)
            print(f"# {recipe.stem}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
