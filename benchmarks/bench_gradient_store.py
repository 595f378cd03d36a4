"""The gradient store at LESS's shape, on CPU: a LESS run over pools of 10k..50k rows (the demo LM,
4 warmup checkpoints with Adam state, k = 8,192, the `auto` projection and storage), each run as a
user runs it (`selectkit run` in a fresh process, a fresh cache), its wall time and peak RSS
(VmHWM); then a second target over the 50k pool with the same cache, where every pool gradient
stage must be cached; and the figures for the paper's 270k x 8192 x 4, projected from the
measured scaling.

    .venv/bin/python benchmarks/bench_gradient_store.py                      # 10k, 20k, 50k
    .venv/bin/python benchmarks/bench_gradient_store.py --rows 50000 10000   # the largest first
    .venv/bin/python benchmarks/bench_gradient_store.py --rows 2000 --quick   # a minute
    .venv/bin/python benchmarks/bench_gradient_store.py --scan 10000 20000 50000 [--against CHECKOUT]

`--scan` isolates the store from the model: each size in a fresh process writes a synthetic store
(N rows x 8,192 x 4 checkpoints, float16 unit rows, `--shard-rows` per shard, through the provider's own
`encode` and the cache's shard writer), then scores LESS over it streamed (32 targets, mean), with the
peak anonymous memory and the scan's seconds; `--against` runs the same child in another checkout
(its own .venv) side by side. The model's per-row gradient cost is what the full runs measure.

Goals (issue 21): the 50k run (6.5 GB of features were it float32) completes with peak RSS at most
2 GB; time grows linearly from 10k to 50k; the second target computes only its own gradients.
Pools and recipes are written under benchmarks/.work/store (gitignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "store"
PROJ_DIM, CHECKPOINTS = 8192, 4


def pool(n: int) -> Path:
    """`n` rows of real demo text: 48-96-byte windows of the demo pool's texts, each row distinct."""
    path = WORK / f"pool-{n}.jsonl"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (ROOT / "recipes" / "data" / "pool.jsonl").open()]
    text = " ".join(r["text"] for r in rows)
    with path.open("w") as out:
        for i in range(n):
            start = (i * 977) % (len(text) - 100)
            width = 48 + (i * 31) % 48
            out.write(json.dumps({"id": f"r{i:06d}", "text": f"{i} {text[start:start + width]}",
                                  "domain": rows[i % len(rows)]["domain"]}) + "\n")
    return path


SHARD_ROWS = [4096]  # rows per store shard (execution.shard_rows; 4096 is the default for model passes)


def recipe(n: int, targets: list[str]) -> Path:
    path = WORK / f"less-{n}-{'-'.join(targets)}.yaml"
    data = ROOT / "recipes" / "data"
    target_lines = "\n".join(f"    {t}: {{path: {data}/target_{t}.jsonl, limit: 32}}" for t in targets)
    path.write_text(f"""selectkit: 1
name: less-{n}
seed: 0
data:
  pool: {{path: {pool(n)}, id: id}}
  targets:
{target_lines}
models:
  lm:
    path: {ROOT}/recipes/models/tiny-lm
    kind: causal-lm
    max_length: 64
    warmup: {{fraction: 0.02, epochs: {CHECKPOINTS}, learning_rate: 2.0e-4, batch_size: 16, micro_batch_size: 16}}
scores:
  influence:
    use: influence.less
    model: lm
    targets: [{', '.join(targets)}]
    with: {{proj_dim: {PROJ_DIM}, aggregate: mean, combine: max}}
select:
  - use: topk
    with: {{score: influence, budget: 5%}}
execution: {{shard_rows: {SHARD_ROWS[0]}}}
output:
  dir: {WORK}/out-{n}-{'-'.join(targets)}
  formats: [parquet]
""")
    return path


def run(recipe_path: Path, cache: str, *extra: str) -> dict:
    """`selectkit run` in a fresh process: wall seconds, CPU seconds (user + system: the measure of
    work that a shared machine's load does not stretch), peak RSS (VmHWM, MB), the peak of its
    anonymous part (RssAnon, sampled every 0.1 s: VmHWM also counts the store's memory-mapped pages,
    which the kernel reclaims at will) and its log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SELECTKIT_CACHE_DIR": cache, "SELECTKIT_PROGRESS_EVERY": "0"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "selectkit", "run", str(recipe_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                for line in open(f"/proc/{proc.pid}/status"):
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]) // 1024)
                    elif line.startswith("RssAnon:"):
                        peak[1] = max(peak[1], int(line.split()[1]) // 1024)
            except OSError:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    log, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    watcher.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode:
        sys.exit(f"run failed ({proc.returncode}):\n{log[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak[0], "peak_anon_mb": peak[1], "log": log}


def scan_child(n: int, shard_rows: int, cache: str) -> None:
    """Write a synthetic LESS-shaped store of `n` rows and score it streamed; print JSON timings."""
    import numpy as np

    from selectkit.storage.cache import Cache
    from selectkit.storage.gradient_store import StoredFeatures, encode
    from selectkit_plugins.lib.influence.scores import less

    rng = np.random.default_rng(0)
    shards = -(-n // shard_rows)
    entry = Cache(Path(cache)).sharded("passes", "synthetic", shards * CHECKPOINTS)
    t0 = time.perf_counter()
    pool = []
    for c in range(CHECKPOINTS):
        for s in range(shards):
            rows = min(shard_rows, n - s * shard_rows)
            entry.write(c * shards + s, encode(rng.standard_normal((rows, PROJ_DIM), dtype=np.float32), "float16"))
        pool.append(StoredFeatures(entry, list(range(c * shards, (c + 1) * shards)), n, PROJ_DIM, "float16"))
    written = time.perf_counter() - t0
    targets = [rng.standard_normal((32, PROJ_DIM)) for _ in range(CHECKPOINTS)]
    t1 = time.perf_counter()
    scores = less(pool, targets, [2e-4, 1.5e-4, 1e-4, 5e-5], reduce=lambda b: b.mean(1, keepdims=True))
    print(json.dumps({"write_s": written, "scan_s": time.perf_counter() - t1, "rows": len(scores)}))


def scan(sizes: list[int], shard_rows: int, against: Path | None) -> None:
    """Each size in a fresh child (this checkout, then `against`): peak memory of writing and scanning."""
    trees = [(ROOT, Path(sys.executable))] + ([(against, against / ".venv" / "bin" / "python")] if against else [])
    print(f"{'checkout':<28} {'rows':>7} {'write s':>8} {'scan s':>7} {'peak anon MB':>12} {'store MB':>9}")
    for n in sizes:
        for root, python in trees:
            cache = tempfile.mkdtemp(prefix=f"scan-{n}-")
            code = (f"import sys; sys.path.insert(0, {str(root / 'benchmarks')!r}); import bench_gradient_store as b; "
                    f"b.scan_child({n}, {shard_rows}, {cache!r})")
            t0 = time.perf_counter()
            out, peak = child_json(python, code, root)
            size = du(cache) / 2**20
            shutil.rmtree(cache, ignore_errors=True)
            print(f"{str(root)[-28:]:<28} {n:>7} {out['write_s']:>8.1f} {out['scan_s']:>7.1f} {peak:>12} {size:>9.0f}"
                  f"   ({time.perf_counter() - t0:.0f} s in all)", flush=True)


def child_json(python: Path | str, code: str, cwd: Path) -> tuple[dict, int]:
    """Run `code` in a fresh `python`: the JSON of its last output line and its peak anonymous memory
    (RssAnon, MB, sampled every 50 ms: the store's memory-mapped pages, which the kernel may drop,
    are not counted)."""
    proc = subprocess.Popen([str(python), "-c", code], stdout=subprocess.PIPE, text=True, cwd=cwd)
    peak = 0
    while proc.poll() is None:
        try:
            for line in open(f"/proc/{proc.pid}/status"):
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) // 1024)
        except OSError:
            pass
        time.sleep(0.05)
    return json.loads(proc.stdout.read().strip().splitlines()[-1]), peak


def du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 20_000, 50_000])
    parser.add_argument("--quick", action="store_true", help="skip the second-target run")
    parser.add_argument("--shard-rows", type=int, default=4096,
                        help="rows per store shard: memory is flat once the pool spans several shards")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--scan", type=int, nargs="+", help="synthetic store sizes: write and scan, no model")
    parser.add_argument("--against", type=Path, help="with --scan: another checkout, run side by side")
    args = parser.parse_args()
    if args.scan:
        return scan(args.scan, args.shard_rows, args.against)
    SHARD_ROWS[0] = args.shard_rows
    results, second = [], None
    print(f"{'rows':>7} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>11} {'anon MB':>8} {'store MB':>9} "
          f"{'float32 would be MB':>19}")
    for n in args.rows:
        cache = tempfile.mkdtemp(prefix=f"store-{n}-")
        r = run(recipe(n, ["politics"]), cache)
        size = du(cache) / 2**20
        float32 = n * PROJ_DIM * CHECKPOINTS * 4 / 2**20
        results.append({"rows": n, "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                        "peak_rss_mb": r["peak_rss_mb"], "peak_anon_mb": r["peak_anon_mb"], "cache_mb": size})
        print(f"{n:>7} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} {r['peak_rss_mb']:>11} {r['peak_anon_mb']:>8} "
              f"{size:>9.0f} {float32:>19.0f}", flush=True)
        if n == max(args.rows) and not args.quick:  # the second target, on the largest pool's cache
            r = run(recipe(n, ["politics", "film"]), cache)
            lines = [line for line in r["log"].splitlines() if "gradient" in line.lower() or "warmup" in line.lower()]
            second = {"rows": n, "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                      "peak_rss_mb": r["peak_rss_mb"], "log": lines}
            print(f"second target over the {n} pool, same cache: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s), "
                  f"peak RSS {r['peak_rss_mb']} MB; gradient and warmup lines of its log:")
            print("\n".join("    " + line for line in lines), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
        if args.json:  # after every run: a long scan stopped early keeps what it measured
            args.json.write_text(json.dumps({"runs": results, "second_target": second}, indent=1))
    results.sort(key=lambda r: r["rows"])
    for a, b in zip(results, results[1:]):
        growth = math.log(b["rows"] / a["rows"])
        print(f"{a['rows']} -> {b['rows']}: exponent of wall time "
              f"{math.log(b['seconds'] / a['seconds']) / growth:.2f}, "
              f"of CPU time {math.log(b['cpu_seconds'] / a['cpu_seconds']) / growth:.2f}, "
              f"of peak RSS {math.log(b['peak_rss_mb'] / a['peak_rss_mb']) / growth:.2f}")
    big = results[-1]
    scale = 270_000 / big["rows"]
    print(f"projected for LESS's 270k x {PROJ_DIM} x {CHECKPOINTS} on this tiny model (linear from {big['rows']}): "
          f"{big['seconds'] * scale / 60:.0f} min ({big['cpu_seconds'] * scale / 60:.0f} CPU min), "
          f"store {big['cache_mb'] * scale / 1024:.1f} GB on disk "
          f"(float32 in RAM would be {270_000 * PROJ_DIM * CHECKPOINTS * 4 / 2**30:.1f} GB), "
          f"peak RSS ~{big['peak_rss_mb']} MB plus the per-row id/score columns")


if __name__ == "__main__":
    main()
