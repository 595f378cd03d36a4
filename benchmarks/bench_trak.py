"""TRAK streamed over the gradient store: memory and time against TracIn on the same store.

Each size runs in a fresh process: it writes a synthetic store (N rows x k x 2 checkpoints, the
`auto` storage for k: float32 below 4,096, float16 unit rows from there; 4,096-row shards, through the
provider's own `encode` and the cache's shard writer), then scores it with `scores.tracin` and
`scores.trak` (64 targets, mean per target), streamed. Reported: CPU seconds of each score (wall time
on a shared machine is stretched by its load, CPU seconds are not) and the child's peak anonymous
memory (RssAnon, sampled; the store's memory-mapped pages are not anonymous). TRAK adds X^T X (N k^2)
and a k x k solve per checkpoint to TracIn's product; its memory adds k x k float64 (32 MB at 2,048).

    .venv/bin/python benchmarks/bench_trak.py                          # k = 2048: 5k and 20k rows
    .venv/bin/python benchmarks/bench_trak.py --dim 8192 --rows 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_gradient_store import child_json  # noqa: E402  (a child's JSON and its peak anonymous memory)

CHECKPOINTS, TARGETS, SHARD_ROWS = 2, 64, 4096


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(n: int, dim: int, cache: str) -> None:
    import numpy as np

    from selectkit.storage.cache import Cache
    from selectkit.storage.gradient_store import StoredFeatures, encode
    from selectkit_plugins.lib.influence.scores import tracin, trak

    dtype = "float16" if dim >= 4096 else "float32"
    rng = np.random.default_rng(0)
    shards = -(-n // SHARD_ROWS)
    entry = Cache(Path(cache)).sharded("passes", "synthetic", shards * CHECKPOINTS)
    pool = []
    for c in range(CHECKPOINTS):
        for s in range(shards):
            rows = min(SHARD_ROWS, n - s * SHARD_ROWS)
            entry.write(c * shards + s, encode(rng.standard_normal((rows, dim), dtype=np.float32), dtype))
        pool.append(StoredFeatures(entry, list(range(c * shards, (c + 1) * shards)), n, dim, dtype))
    targets = [rng.standard_normal((TARGETS, dim)) for _ in range(CHECKPOINTS)]
    mean = lambda block: block.mean(1, keepdims=True)  # noqa: E731
    out = {"dtype": dtype}
    for name, fn in (("tracin", lambda: tracin(pool, targets, [2e-4, 1e-4], reduce=mean)),
                     ("trak", lambda: trak(pool, targets, [2 / 3, 1 / 3], damping=0.1, reduce=mean))):
        c0, t0 = cpu(), time.perf_counter()
        scores = fn()
        out[name] = {"cpu_s": cpu() - c0, "wall_s": time.perf_counter() - t0, "rows": len(scores)}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[5_000, 20_000])
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()
    print(f"k = {args.dim}, {CHECKPOINTS} checkpoints, {TARGETS} targets (mean), {SHARD_ROWS}-row shards")
    print(f"{'rows':>7} {'dtype':>8} {'TracIn CPU s':>12} {'TRAK CPU s':>11} {'TRAK wall s':>11} {'peak anon MB':>12}")
    for n in args.rows:
        cache = tempfile.mkdtemp(prefix=f"trak-{n}-")
        code = f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_trak as b; " \
               f"b.child({n}, {args.dim}, {cache!r})"
        out, peak = child_json(sys.executable, code, ROOT)
        shutil.rmtree(cache, ignore_errors=True)
        print(f"{n:>7} {out['dtype']:>8} {out['tracin']['cpu_s']:>12.1f} {out['trak']['cpu_s']:>11.1f} "
              f"{out['trak']['wall_s']:>11.1f} {peak:>12}", flush=True)


if __name__ == "__main__":
    main()
