"""Out-of-core scale: `dsir` + `topk` over synthetic pools of 100k, 1M and 10M rows (~100 words
each, written to Parquet once under benchmarks/.work/scale and reused), each run as a user runs
it (`selectkit run` in a fresh process, a fresh cache). Reports wall time and peak RSS of each
run, and the log-log growth exponents between sizes.

    .venv/bin/python benchmarks/bench_scale.py                    # 100k, 1M, 10M (~1 h on 2 cores)
    .venv/bin/python benchmarks/bench_scale.py --rows 100000 1000000
    .venv/bin/python benchmarks/bench_scale.py --rows 100000 --keep-outputs

Goals (issue 9): the 10M run completes on a 2-core, 24 GB machine; peak RSS at 10M at most 3x
that at 1M; time grows at most linearly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "scale"
CHUNK = 100_000
VOCAB = 20_000
WORDS = 100


def vocabulary(seed: int = 0) -> pl.Series:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 10, size=VOCAB)
    words = ["".join(rng.choice(letters, size=n)) for n in lengths]
    return pl.Series("w", sorted(set(words)))


def documents(n: int, vocab: pl.Series, rng: np.random.Generator, shift: int = 0) -> list[str]:
    """`n` documents of ~WORDS words drawn from a Zipf-like law over the vocabulary (`shift`
    moves the law's head: a target with a different word mix than the pool)."""
    v = len(vocab)
    ranks = np.minimum(rng.zipf(1.3, size=n * WORDS) - 1, v - 1)
    ids = (ranks + shift) % v
    frame = pl.DataFrame({"doc": np.repeat(np.arange(n), WORDS), "w": vocab.gather(ids)})
    return frame.group_by("doc", maintain_order=True).agg(pl.col("w").str.join(" "))["w"].to_list()


def make_pool(rows: int) -> Path:
    """A Parquet pool of `rows` rows (id, text, domain), written once in chunks (bounded memory)."""
    path = WORK / f"pool-{rows}.parquet"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    rng = np.random.default_rng(rows)
    parts = WORK / f".parts-{rows}"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        half = n // 10  # a tenth of the pool looks like the target
        texts = documents(n - half, vocab, rng) + documents(half, vocab, rng, shift=5000)
        order = rng.permutation(n)
        pl.DataFrame({"id": np.arange(start, start + n, dtype=np.int64),
                      "text": [texts[i] for i in order],
                      "domain": ["target-like" if i >= n - half else "other" for i in order]}).write_parquet(
            parts / f"{start:012d}.parquet")
    pl.scan_parquet(sorted(str(p) for p in parts.glob("*.parquet"))).sink_parquet(path, row_group_size=65536)
    shutil.rmtree(parts)
    return path


def make_target() -> Path:
    path = WORK / "target.jsonl"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        texts = documents(200, vocabulary(), np.random.default_rng(99), shift=5000)
        pl.DataFrame({"text": texts}).write_ndjson(path)
    return path


def recipe(rows: int, pool: Path, target: Path) -> Path:
    path = WORK / f"scale-{rows}.yaml"
    path.write_text(f"""selectkit: 1
name: scale-{rows}
data:
  pool: {{path: {pool}, id: id}}
  targets:
    target: {{path: {target}}}
scores:
  dsir: {{use: dsir, targets: [target]}}
select:
  - use: topk
    with: {{score: dsir, budget: 1%}}
output: {{dir: {WORK / f"out-{rows}"}, formats: [parquet], report: false, summarize_by: domain}}
""")
    return path


def _hwm_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(path: Path, cache: Path, fresh: bool = True) -> dict:
    """One `selectkit run` in a fresh process (and, unless `fresh` is False, a fresh cache): wall
    time and its peak RSS (VmHWM, polled: the rusage of a child also counts the parent's pages it
    had before exec)."""
    if fresh:
        shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "SELECTKIT_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "selectkit", "run", "-q", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm_kib(proc.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"run failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak / 1024, "summary": stdout.strip().splitlines()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--keep-outputs", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    target = make_target()
    results = {}
    for rows in sorted(args.rows):
        t0 = time.perf_counter()
        pool = make_pool(rows)
        made = time.perf_counter() - t0
        res = run(recipe(rows, pool, target), WORK / f"cache-{rows}")
        res["pool_mb"] = pool.stat().st_size / 2**20
        res["generate_s"] = made
        results[rows] = res
        print(f"{rows:>11,} rows  {res['seconds']:8.1f} s  peak RSS {res['peak_rss_mb']:8.0f} MB  "
              f"pool {res['pool_mb']:,.0f} MB  | {res['summary']}", flush=True)
        if not args.keep_outputs:
            shutil.rmtree(WORK / f"cache-{rows}", ignore_errors=True)
    sizes = sorted(results)
    for a, b in zip(sizes, sizes[1:]):
        scale = math.log(b / a)
        t = math.log(results[b]["seconds"] / results[a]["seconds"]) / scale
        m = math.log(results[b]["peak_rss_mb"] / results[a]["peak_rss_mb"]) / scale
        ratio = results[b]["peak_rss_mb"] / results[a]["peak_rss_mb"]
        print(f"{a:,} -> {b:,}: time exponent {t:.2f}, RSS exponent {m:.2f} (RSS x{ratio:.2f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
