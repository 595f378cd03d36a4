"""report.html at pool scale: build a synthetic finished run of N rows (selection.parquet, a parquet pool with
texts and 20 domains, manifest.json, optional embeddings) and time `write_report` on it; print page size.

    .venv/bin/python benchmarks/bench_report_scale.py                 # 1M rows
    .venv/bin/python benchmarks/bench_report_scale.py --rows 100000 --embeddings 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl

from selectkit.data.sources import source_fingerprint
from selectkit.results.report import write_report

WORDS = np.array("the a of to and in selection data model score pool target token budget stage recipe seed".split())


def synthetic_run(folder: Path, n: int, dim: int) -> Path:
    """A run folder with three stages (threshold, dedup, topk), five score columns and an n-row pool."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, n)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    words = WORDS[rng.integers(0, len(WORDS), int(lengths.sum()))]
    texts = [" ".join(words[s:s + k]) for s, k in zip(starts, lengths)]
    ids = [f"doc-{i:07d}" for i in range(n)]
    pool = folder / "pool.parquet"
    domains = [f"d{j:02d}" for j in rng.integers(0, 20, n)]
    pl.DataFrame({"id": ids, "text": texts, "domain": domains}).write_parquet(pool)
    quality = rng.normal(size=n)
    ppl = np.exp(rng.normal(2, 0.5, n))
    dropped = np.full(n, None, dtype=object)
    dropped[ppl > np.quantile(ppl, 0.9)] = "threshold"
    dropped[(dropped == None) & (rng.random(n) < 0.05)] = "dedup"  # noqa: E711 - elementwise
    alive = np.flatnonzero(dropped == None)  # noqa: E711
    budget = n // 10
    order = alive[np.argsort(-quality[alive], kind="stable")]
    dropped[order[budget:]] = "topk"
    rank = np.zeros(n, dtype=np.int64)
    rank[order[:budget]] = np.arange(1, budget + 1)
    selected = rank > 0
    out = folder / "run"
    out.mkdir()
    pl.DataFrame({"id": ids, "selected": selected, "weight": selected.astype(float), "count": selected.astype(int),
                  "rank": pl.Series(rank).replace(0, None), "dropped_by": pl.Series(dropped, dtype=pl.String),
                  "score.quality": quality, "score.ppl": ppl, "score.len": lengths.astype(float),
                  "score.sim.math": rng.normal(size=n), "score.sim.code": rng.normal(size=n),
                  "tokens": lengths, "domain": domains}  # runs write output.summarize_by's column and tokens
                 ).write_parquet(out / "selection.parquet")
    files = {"selection": "selection.parquet"}
    if dim:
        np.save(out / "embeddings.npy", rng.normal(size=(n, dim)).astype(np.float32))
        files["embeddings"] = "embeddings.npy"
    stages = [{"use": "threshold", "name": None, "with": {"score": "ppl", "max_quantile": 0.9}},
              {"use": "dedup", "name": None, "with": {"threshold": 0.05}},
              {"use": "topk", "name": None, "with": {"score": "quality", "budget": "10%"}}]
    manifest = {
        "format_version": 1,
        "recipe": {"file": str(folder / "recipe.yaml"), "name": "scale", "hash": "0" * 64, "resolved": {
            "seed": 0, "data": {"pool": {"path": str(pool), "text": "text", "id": "id", "limit": None, "format": None}},
            "scores": {"quality": {}, "ppl": {}, "len": {}, "sim": {}}, "select": stages,
            "output": {"summarize_by": "domain"}}},
        "selectkit_version": "0.1.0", "plugin_versions": {"selectkit": "0.1.0"},
        "data": {"pool": {"path": str(pool), "rows": n, "fingerprint": source_fingerprint(
            pool, text="text", id_column="id", limit=None, reader="parquet")}},
        "stages": [{"kind": "select", "label": s["use"], "key": "k", "status": "computed", "seconds": 1.0}
                   for s in stages],
        "selection": {"pool": n, "selected": int(selected.sum()),
                      "per_stage": [{"stage": "threshold", "kept": None},
                                    {"stage": "dedup", "kept": None, "diagnostics": {"removed": 1, "groups": 1}},
                                    {"stage": "topk", "kept": budget}]},
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--embeddings", type=int, default=32, help="embedding dimension (0: none)")
    parser.add_argument("--memory", action="store_true", help="trace the peak of Python/numpy allocations (slower)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        run = synthetic_run(Path(work), args.rows, args.embeddings)
        made = time.perf_counter() - started
        if args.memory:
            tracemalloc.start()
        started = time.perf_counter()
        page = write_report(run)
        seconds = time.perf_counter() - started
        memory = ""
        if args.memory:
            memory = f", traced peak {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MB (polars' own not traced)"
            tracemalloc.stop()
        text = page.read_text()
        print(f"rows {args.rows:,}: built the run in {made:.1f} s; report in {seconds:.1f} s, "
              f"{page.stat().st_size / 1024:.0f} KB, {text.count('<svg')} figures{memory}")


if __name__ == "__main__":
    main()
