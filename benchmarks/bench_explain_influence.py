"""`selectkit explain RUN --influence TARGET_ID` end to end (issue 21, part 4): the first question
(opens the store, builds the neighbours index, keeps it in the cache), a second question (reads the
index back), and the exact streamed scan of every pool row that it avoids; the top-k it returns
against the scan's.

The run folder is synthetic but complete as `explain` reads it: a float16 gradient store written through
the cache in 4,096-row shards at 2 checkpoints (rows around 200 cluster centres, as in
bench_influence_index.py), a target store, selection.parquet and a manifest whose `influence` entry
names them. The first two questions are timed in this process (the work, not the imports); the third is
the command in a fresh process (`selectkit explain ... --format json`), as a user runs it.

    .venv/bin/python benchmarks/bench_explain_influence.py                  # 50k rows x 2048 dims
    .venv/bin/python benchmarks/bench_explain_influence.py --rows 10000     # quick (flat index)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SHARD = 4096


def write_store(cache, key: str, checkpoints: list[np.ndarray]) -> dict:
    """Features per checkpoint into one sharded entry laid out as the gradients provider lays it out."""
    from selectkit.storage.gradient_store import checkpoint_shards, encode

    rows = len(checkpoints[0])
    row_shards = max(1, -(-rows // SHARD))
    entry = cache.sharded("passes", key, row_shards * len(checkpoints))
    for c, features in enumerate(checkpoints):
        for i, index in enumerate(checkpoint_shards(c, row_shards)):
            entry.write(index, encode(features[i * SHARD:(i + 1) * SHARD], "float16"))
    entry.finish(label=f"synthetic gradient features ({key})")
    return {"step": f"pass:{key}", "artifact": "passes", "key": key, "shards": row_shards * len(checkpoints),
            "row_shards": row_shards, "points": len(checkpoints), "feature_dtype": "float16", "label": key}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import polars as pl

    from selectkit.results.neighbours import exact_top_k
    from selectkit.storage.cache import Cache
    from selectkit.storage.gradient_store import open_store

    work = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    cache = Cache(work / "cache")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, args.dim)).astype(np.float32)
    labels = rng.integers(0, 200, size=args.rows)
    t_labels = rng.integers(0, 200, size=args.targets)
    pool = [centres[labels] + 1.5 * rng.normal(size=(args.rows, args.dim)).astype(np.float32) for _ in range(2)]
    target = [centres[t_labels] + 1.5 * rng.normal(size=(args.targets, args.dim)).astype(np.float32)
              for _ in range(2)]
    lrs = [2e-4, 1e-4]
    weights = [lr / sum(lrs) for lr in lrs]
    entry = {"method": "less", "cosine": True, "normalize_lrs": True,
             "checkpoints": [{"name": f"epoch-{c + 1}", "lr": lr} for c, lr in enumerate(lrs)], "weights": weights,
             "pool": write_store(cache, "pool", pool),
             "targets": {"task": {**write_store(cache, "task", target),
                                  "ids": [f"t{i}" for i in range(args.targets)]}}}
    del pool
    run = work / "run"
    run.mkdir()
    ids = [f"p{i:07d}" for i in range(args.rows)]
    pl.DataFrame({"id": ids, "selected": [i < 1000 for i in range(args.rows)],
                  "rank": [i + 1 if i < 1000 else None for i in range(args.rows)],
                  "text": [f"example {i}" for i in range(args.rows)]}).write_parquet(run / "selection.parquet")
    (run / "manifest.json").write_text(json.dumps({
        "format_version": 2, "written_by": "selectkit", "cache": str(cache.root),
        "scores": {"infl": {"scorer": "influence.less", "shape": "matrix", "columns": ["task"], "influence": entry}},
        "selection": {"pool": args.rows, "selected": 1000}, "files": {"selection": "selection.parquet"}}))

    from selectkit.results.influence import explain_influence

    def ask(target_id: str) -> tuple[float, dict]:  # in this process: the work, without the imports
        start = time.perf_counter()
        got = explain_influence(run, target_id, k=args.k)
        return time.perf_counter() - start, got

    import faiss  # noqa: F401 - imported before the clock starts, as torch is by the sketch below
    import torch  # noqa: F401

    first_s, first = ask("t0")
    second_s, second = ask("t1")
    start = time.perf_counter()  # the command as a user runs it: a fresh process, the index cached
    got = subprocess.run([sys.executable, "-m", "selectkit", "explain", str(run), "--influence", "t2", "--top",
                          str(args.k), "--format", "json"], capture_output=True, text=True)
    command_s = time.perf_counter() - start
    if got.returncode:
        raise SystemExit(got.stderr)
    third = json.loads(got.stdout)
    start = time.perf_counter()
    stored = open_store(cache.sharded("passes", "pool", entry["pool"]["shards"]), entry["pool"]["row_shards"], 2,
                        "float16")
    queries = [t[:3] for t in target]
    _, ref_rows = exact_top_k(stored, queries, weights, args.k)
    scan_s = time.perf_counter() - start
    recall = [len({n["row"] for n in got["neighbours"]} & set(ref.tolist())) / args.k
              for got, ref in zip((first, second, third), ref_rows)]
    out = {"rows": args.rows, "dim": args.dim, "checkpoints": 2, "k": args.k, "index": first["index"]["kind"],
           "first_question_s": first_s, "second_question_s": second_s, "command_s": command_s,
           "exact_scan_s_for_3_targets": scan_s, "recall_at_k": recall,
           "statuses": [first["index"]["status"], second["index"]["status"], third["index"]["status"]]}
    print(f"{args.rows:,} pool rows x {args.dim} dims x 2 checkpoints (float16 store), k={args.k}, "
          f"index {out['index']}")
    print(f"first question (store opened, index built and cached): {first_s:6.2f} s  [{out['statuses'][0]}]")
    print(f"second question (index read from the cache):          {second_s:6.2f} s  [{out['statuses'][1]}]")
    print(f"the command in a fresh process (imports included):     {command_s:6.2f} s  [{out['statuses'][2]}]")
    print(f"exact streamed scan of every pool row (3 targets):     {scan_s:6.2f} s (the reference)")
    print(f"recall@{args.k} of the three answers against the scan: {recall}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
