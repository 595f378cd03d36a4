"""Local executor vs the Ray executor on this machine, side by side in one run.

1. `dsir` + `topk` over a synthetic pool (bench_scale's Parquet, 1M rows by default): local, then
   Ray on a local cluster of 1 and of 2 CPUs (`ray start --head --num-cpus N`, started once per size
   and timed apart: that is Ray's fixed overhead). Scaling efficiency = t(1 worker) / (2 t(2 workers)).
2. A model pass (perplexity with the tiny demo LM over the demo pool, 16 shards, and over the pool
   repeated 4 times, 64 shards): local vs Ray with 2 actors; the Ray path's overhead is
   t(ray) / t(local) - 1, and the two sizes split it into a fixed part and a per-shard share.

    .venv/bin/python benchmarks/bench_ray.py                      # ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_ray.py --rows 100000 --repeats 1

Each selection.parquet is compared byte for byte with the local run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


PARALLEL = ("read:pool", "score:dsir")  # the steps that map over shards in the dsir recipe


def timed_run(recipe: Path, out: Path, cache: Path, *args: str) -> float:
    """Wall seconds of a fresh run; the seconds of its sharded steps go to `PARTS[out]`."""
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "SELECTKIT_CACHE_DIR": str(cache), "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "selectkit", "run", "-q", str(recipe), "--out", str(out), *args],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    PARTS.setdefault(str(out), []).append(sum(s["seconds"] for s in stages if s["step"] in PARALLEL))
    return time.perf_counter() - started


PARTS: dict[str, list[float]] = {}


# one authentication mode for the head and every client: Ray >= 2.5x turns token auth on for a
# client when ~/.ray/auth_token exists, and a head started without it then refuses the client
os.environ.setdefault("RAY_AUTH_MODE", "token")


def start_cluster(cpus: int, temp: Path) -> tuple[str, float]:
    started = time.perf_counter()
    out = subprocess.run(["ray", "start", "--head", f"--num-cpus={cpus}", "--include-dashboard=false",
                          f"--temp-dir={temp}", "--disable-usage-stats"], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    address = next(line.split("'")[1] for line in out.stdout.splitlines() if "ray start --address=" in line)
    return address, time.perf_counter() - started


def stop_cluster() -> None:
    subprocess.run(["ray", "stop", "--force"], capture_output=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})


def median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-copies", type=int, nargs="+", default=[1, 4],
                        help="model-pass pools: the demo pool repeated N times (two sizes separate Ray's fixed "
                             "overhead from its per-shard one)")
    args = parser.parse_args()
    from bench_scale import make_pool, make_target, recipe

    work = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))
    pool, target = make_pool(args.rows), make_target()
    dsir = recipe(args.rows, pool, target)
    model_pools = {}
    for copies in args.model_copies:
        model_pools[copies] = work / f"pool-x{copies}.jsonl"
        lines = (ROOT / "recipes" / "data" / "pool.jsonl").read_text().splitlines()
        with open(model_pools[copies], "w") as handle:
            for c in range(copies):
                for line in lines:
                    row = json.loads(line)
                    row["id"] = f"{row['id']}-{c}"
                    handle.write(json.dumps(row) + "\n")
    rows = []
    local = median(lambda: timed_run(dsir, work / "dsir-local", work / "c"), args.repeats)
    reference = (work / "dsir-local" / "selection.parquet").read_bytes()
    rows.append(("dsir+topk", f"{args.rows:,} rows", "local", local, "", True))
    shards = "65536"
    model_local, model_ref = {}, {}
    recipes = {copies: model_recipe(work, path) for copies, path in model_pools.items()}
    for copies, m in recipes.items():
        model_local[copies] = median(lambda m=m: timed_run(m, work / "m-local", work / "c", "--shard-rows", "82"),
                                     args.repeats)
        model_ref[copies] = (work / "m-local" / "selection.parquet").read_bytes()
        rows.append(("perplexity pass", f"{1306 * copies:,} rows, {16 * copies} shards", "local", model_local[copies],
                     "", True))
    ray_times, model_ray = {}, {}
    for cpus in (1, 2):
        stop_cluster()
        address, startup = start_cluster(cpus, work / f"ray{cpus}")
        try:
            t = median(lambda c=cpus, a=address: timed_run(dsir, work / f"dsir-ray{c}", work / "c", "--executor", "ray",
                                                           "--address", a, "--shard-rows", shards), args.repeats)
            same = (work / f"dsir-ray{cpus}" / "selection.parquet").read_bytes() == reference
            ray_times[cpus] = t
            rows.append(("dsir+topk", f"{args.rows:,} rows", f"ray, {cpus} CPU(s)", t,
                         f"cluster start {startup:.1f} s", same))
            if cpus == 2:
                for copies, r in recipes.items():
                    m = median(lambda a=address, r=r: timed_run(
                        r, work / "m-ray", work / "c", "--executor", "ray", "--address", a, "--shard-rows", "82"),
                        args.repeats)
                    same = (work / "m-ray" / "selection.parquet").read_bytes() == model_ref[copies]
                    model_ray[copies] = m
                    rows.append(("perplexity pass", f"{1306 * copies:,} rows, {16 * copies} shards", "ray, 2 actors",
                                 m, f"overhead {m / model_local[copies] - 1:+.0%}", same))
        finally:
            stop_cluster()
    print(f"{'workload':<18} {'size':<22} {'executor':<16} {'median s':>9}  {'note':<26} identical")
    for name, size, how, t, note, same in rows:
        print(f"{name:<18} {size:<22} {how:<16} {t:9.1f}  {note:<26} {same}")
    if 1 in ray_times and 2 in ray_times:
        one = statistics.median(PARTS[str(work / "dsir-ray1")])
        two = statistics.median(PARTS[str(work / "dsir-ray2")])
        print(f"scaling 1 -> 2 CPUs, whole run: {ray_times[1] / (2 * ray_times[2]):.2f}; sharded steps "
              f"({', '.join(PARALLEL)}: {one:.1f} s -> {two:.1f} s): {one / (2 * two):.2f} (1.00 = linear)")
    if len(model_ray) >= 2:  # ray - local = fixed + share * local: the fixed start and the per-shard overhead
        (a, ta, ra), (b, tb, rb) = [(c, model_local[c], model_ray[c]) for c in sorted(model_ray)[:2]]
        share = ((rb - tb) - (ra - ta)) / (tb - ta)
        fixed = (ra - ta) - share * ta
        print(f"perplexity pass on Ray: fixed overhead {fixed:.1f} s (actor start, model load, Ray Data), "
              f"proportional overhead {share:+.1%} of the local time")
    shutil.rmtree(work, ignore_errors=True)


def model_recipe(work: Path, pool: Path) -> Path:
    path = work / f"model-{pool.stem}.yaml"
    path.write_text(f"""selectkit: 1
name: ray-model-pass
data:
  pool: {{path: {pool}, id: id}}
models:
  lm: {{path: {ROOT}/recipes/models/tiny-lm, kind: causal-lm, max_length: 256}}
scores:
  ppl: {{use: perplexity, model: lm}}
select:
  - use: topk
    with: {{score: ppl, budget: 10%}}
output: {{dir: out, formats: [parquet], report: false}}
""")
    return path


if __name__ == "__main__":
    main()
