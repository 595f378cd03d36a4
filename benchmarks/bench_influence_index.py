"""Nearest neighbours over the gradient store (issue 21, part 4): recall@k of InfluenceIndex
(a sparse JL sketch of the checkpoints' unit rows in faiss, exact re-rank of its candidates from
the store) against the exact streamed LESS product, its build time and its query time against a
full scan, on a float16 store written through the cache in 4,096-row shards.

Features are synthetic: rows scattered around 200 cluster centres (the structure projected
gradients of a real pool have: examples of one task point the same way), at 2 checkpoints.

    .venv/bin/python benchmarks/bench_influence_index.py                 # 50k rows x 2048 dims, ~3 min
    .venv/bin/python benchmarks/bench_influence_index.py --rows 10000    # quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from selectkit.results.neighbours import InfluenceIndex, exact_top_k
    from selectkit.storage.cache import Cache
    from selectkit.storage.gradient_store import StoredFeatures, encode

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, args.dim)).astype(np.float32)
    labels = rng.integers(0, 200, size=args.rows)
    shard = 4096
    shards = list(range(0, args.rows, shard))
    cache = Cache(Path(tempfile.mkdtemp(prefix="bench-nn-")))
    pool = []
    for c in range(2):
        entry = cache.sharded("passes", f"bench-nn-{c}", len(shards))
        for i, lo in enumerate(shards):
            n = min(shard, args.rows - lo)
            rows = centres[labels[lo:lo + n]] + rng.normal(size=(n, args.dim)).astype(np.float32) * 1.5
            entry.write(i, encode(rows, "float16"))
        pool.append(StoredFeatures(entry, list(range(len(shards))), args.rows, args.dim, "float16"))
    q_labels = rng.integers(0, 200, size=args.queries)
    queries = [centres[q_labels] + rng.normal(size=(args.queries, args.dim)).astype(np.float32) * 1.5
               for _ in range(2)]
    weights = [0.5, 0.5]

    start = time.perf_counter()
    ref_scores, ref_rows = exact_top_k(pool, queries, weights, args.k)
    scan = time.perf_counter() - start
    out = {"rows": args.rows, "dim": args.dim, "checkpoints": 2, "queries": args.queries, "k": args.k,
           "exact_scan_s": scan}
    print(f"{args.rows:,} rows x {args.dim} dims x 2 checkpoints (float16 store), {args.queries} queries, k={args.k}")
    print(f"exact streamed scan: {scan:.2f} s for all queries")
    for name, flat_below in (("flat (sketch 1024)", 10**12), ("IVF-PQ 64 B/row", 0)):
        start = time.perf_counter()
        index = InfluenceIndex(pool, weights, sketch_dim=1024, flat_below=flat_below)
        build = time.perf_counter() - start
        start = time.perf_counter()
        scores, rows = index.search(queries, k=args.k)
        query = time.perf_counter() - start
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(rows, ref_rows)]))
        out[name] = {"build_s": build, "query_s": query, "recall": recall}
        print(f"{name:20s} build {build:6.2f} s  query {query:6.2f} s ({query / args.queries * 1e3:.0f} ms each)  "
              f"recall@{args.k} {recall:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
