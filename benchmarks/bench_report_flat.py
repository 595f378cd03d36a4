"""Is report.html flat in memory as the pool grows? Peak RSS (VmHWM) and wall time of `selectkit report` in a
fresh process on synthetic selection tables of growing size (two score columns, tokens, a 3-value group
column, 1% selected; no pool file, so only selection.parquet is read), written in 1M-row parts like a run's.

    .venv/bin/python benchmarks/bench_report_flat.py                     # 2M and 20M rows (~1 min to write)
    .venv/bin/python benchmarks/bench_report_flat.py --rows 200000 2000000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import WORK, _hwm_kib  # noqa: E402

PART = 1_000_000


def table(rows: int) -> Path:
    """A run folder holding only selection.parquet and a small manifest (written once, kept under WORK)."""
    folder = WORK / f"flat-{rows}"
    if (folder / "manifest.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for k, lo in enumerate(range(0, rows, PART)):
        m = min(PART, rows - lo)
        rng = np.random.default_rng(k)
        chosen = rng.random(m) < 0.01
        words = rng.integers(1, 300, m)
        path = folder / f".part-{k:05d}.parquet"
        pl.DataFrame({"id": np.arange(lo, lo + m), "selected": chosen, "weight": chosen.astype(float),
                      "count": chosen.astype(np.int64),
                      "dropped_by": pl.Series([None if c else "topk" for c in chosen], dtype=pl.String),
                      "score.dsir": rng.normal(size=m), "score.words": words.astype(float), "tokens": words,
                      "domain": rng.choice(np.array(["a", "b", "c"]), m)}).write_parquet(path)
        parts.append(path)
    rank = pl.when(pl.col("selected")).then(pl.col("selected").cast(pl.Int64).cum_sum())
    pl.scan_parquet(parts).with_columns(rank.alias("rank")).sink_parquet(folder / "selection.parquet")
    for path in parts:
        path.unlink()
    (folder / "manifest.json").write_text(json.dumps({"format_version": 2, "recipe": {"name": f"flat-{rows}",
        "resolved": {"select": [{"use": "topk", "with": {"score": "dsir", "budget": "1%"}}],
                     "scores": {"dsir": {}, "words": {}}, "output": {"summarize_by": "domain"}}}}))
    return folder


def report(folder: Path) -> dict:
    import subprocess
    import time

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "selectkit", "report", str(folder), "--out",
                             str(folder / "report.html")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm_kib(proc.pid))
        time.sleep(0.05)
    _, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(stderr[-3000:])
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[2_000_000, 20_000_000])
    args = parser.parse_args()
    results = {}
    for rows in sorted(args.rows):
        res = results[rows] = report(table(rows))
        print(f"{rows:>12,} rows: report {res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    if len(results) >= 2:
        a, b = min(results), max(results)
        print(f"peak RSS: {b:,} rows / {a:,} rows = x{results[b]['peak_rss_mb'] / results[a]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
