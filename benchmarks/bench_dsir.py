"""DSIR speed and memory: selectkit's `dsir` scorer + `importance_resample` against the reference
package (`data-selection` 1.0.3: fit + compute_importance_weights + resample), on the same files.

Each tool runs in its own subprocess (num_proc=1 for the reference) so peak RSS is its own.
The pool is synthetic text in four domains (~100-150 words a document, generated from a fixed
seed); the target is held-out documents of one domain.

    .venv/bin/python benchmarks/bench_dsir.py            # 100k documents, medians of 3 runs
    .venv/bin/python benchmarks/bench_dsir.py --quick    # 10k documents, one run each
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOMAINS = ("news", "science", "sports", "cooking")
TARGET_DOMAIN = "science"
TOOLS = ("selectkit", "selectkit-reference", "reference")


# ---------------------------------------------------------------- data


def generate(directory: Path, n_pool: int, n_target: int, seed: int = 0) -> None:
    """Write pool.jsonl (domains in equal shares) and target.jsonl (one domain) of synthetic text.
    Each domain mixes a shared Zipfian vocabulary with its own; sentences end in punctuation."""
    rng = np.random.default_rng(seed)
    syllables = np.array([c + v for c in "bcdfghklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")])
    vocab_size = 20000
    parts = rng.integers(0, len(syllables), size=(vocab_size, 3))
    counts = rng.integers(1, 4, size=vocab_size)
    vocab = np.array(["".join(syllables[p[:c]]) for p, c in zip(parts, counts, strict=True)])
    zipf = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
    shared = zipf / zipf.sum()
    mixtures = {}
    for domain in DOMAINS:
        own = zipf[rng.permutation(vocab_size)]
        mixtures[domain] = 0.9 * shared + 0.1 * own / own.sum()

    def documents(domain: str, n: int) -> list[str]:
        lengths = rng.integers(100, 151, size=n)
        words = vocab[rng.choice(vocab_size, size=int(lengths.sum()), p=mixtures[domain])]
        marks = rng.choice(np.array(["", "", "", "", "", "", "", ",", "."]), size=len(words))
        tokens = np.char.add(words, marks).tolist()
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [" ".join(tokens[a:b]).capitalize() + "." for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    pool_domains = np.array(DOMAINS)[rng.permutation(np.arange(n_pool) % len(DOMAINS))]
    pool_texts = {d: iter(documents(d, int((pool_domains == d).sum()))) for d in DOMAINS}
    with open(directory / "pool.jsonl", "w") as handle:
        for i, domain in enumerate(pool_domains.tolist()):
            handle.write(json.dumps({"id": i, "domain": domain, "text": next(pool_texts[domain])}) + "\n")
    with open(directory / "target.jsonl", "w") as handle:
        for i, text in enumerate(documents(TARGET_DOMAIN, n_target)):
            handle.write(json.dumps({"id": i, "domain": TARGET_DOMAIN, "text": text}) + "\n")


# ---------------------------------------------------------------- workers (one tool per process)


def run_selectkit(data: Path, budget: int, preset: str) -> dict:
    from selectkit.contract.components import ScoreContext, SelectContext
    from selectkit.data.sources import load_dataset
    from selectkit_plugins.readers import JsonLines
    from selectkit_plugins.scorers.dsir import DSIR, DSIRParams
    from selectkit_plugins.selectors.importance_resample import ImportanceResample, ImportanceResampleParams

    start = time.perf_counter()
    readers = {"jsonl": JsonLines}
    pool = load_dataset("pool", data / "pool.jsonl", text="text", id_column="id", limit=None, fmt=None,
                        readers=readers)
    target = load_dataset("target", data / "target.jsonl", text="text", id_column="id", limit=None, fmt=None,
                          readers=readers)
    loaded = time.perf_counter()
    score = DSIR(DSIRParams(preset=preset)).run(ScoreContext(pool=pool, targets={"target": target}, seed=0))
    scored = time.perf_counter()
    selector = ImportanceResample(ImportanceResampleParams(budget=budget))
    chosen = selector.run(SelectContext(candidates=np.arange(len(pool)), pool=pool, seed=0, stage="resample",
                                        score=score)).indices
    done = time.perf_counter()
    domains = pool.rows["domain"].to_numpy()[chosen].tolist()
    return {"seconds": done - start, "phases": {"load": loaded - start, "score": scored - loaded,
                                                "select": done - scored}, "domains": domains}


def run_reference(data: Path, budget: int) -> dict:
    from data_selection import HashedNgramDSIR

    np.random.seed(0)  # the package draws its Gumbel noise from the global RNG
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        dsir = HashedNgramDSIR([str(data / "pool.jsonl")], [str(data / "target.jsonl")], cache_dir=f"{tmp}/cache",
                               num_proc=1)
        dsir.fit_importance_estimator(num_tokens_to_fit="auto")
        fitted = time.perf_counter()
        dsir.compute_importance_weights()
        weighted = time.perf_counter()
        dsir.resample(out_dir=f"{tmp}/out", num_to_sample=budget, cache_dir=f"{tmp}/resample")
        done = time.perf_counter()
        with open(f"{tmp}/out/0.jsonl") as handle:
            domains = [json.loads(line)["domain"] for line in handle]
    return {"seconds": done - start, "phases": {"fit": fitted - start, "weights": weighted - fitted,
                                                "resample": done - weighted}, "domains": domains}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    fork + exec, so a worker would report the driver's peak when that is higher."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(tool: str, data: Path, budget: int) -> None:
    result = run_reference(data, budget) if tool == "reference" else \
        run_selectkit(data, budget, "reference" if tool == "selectkit-reference" else "robust")
    result["max_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# ---------------------------------------------------------------- driver


def measure(tool: str, data: Path, budget: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, "--data", str(data), "--budget", str(budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def composition(domains: list[str]) -> dict[str, float]:
    return {d: domains.count(d) / max(len(domains), 1) for d in DOMAINS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k documents, one run of each tool")
    parser.add_argument("--n", type=int, default=100_000, help="pool documents")
    parser.add_argument("--targets", type=int, default=1000, help="target documents")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tool (medians are reported)")
    parser.add_argument("--reference-repeats", type=int, default=None,
                        help="runs of the reference (default: --repeats)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ", ".join(TOOLS))
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.data, args.budget)
    if args.quick:
        args.n, args.repeats = 10_000, 1
    budget = args.n // 10
    tools = args.tools.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        generate(data, args.n, args.targets)
        print(f"generated {args.n} pool + {args.targets} target documents in {time.perf_counter() - started:.1f}s; "
              f"budget {budget}; target domain {TARGET_DOMAIN!r} is {1 / len(DOMAINS):.0%} of the pool")
        runs: dict[str, list[dict]] = {}
        for tool in tools:
            repeats = args.reference_repeats if tool == "reference" and args.reference_repeats else args.repeats
            runs[tool] = [measure(tool, data, budget) for _ in range(repeats)]
    base = statistics.median(r["seconds"] for r in runs["reference"]) if "reference" in runs else None
    print(f"\n{'tool':<20} {'runs':>4} {'seconds':>8} {'docs/s':>9} {'vs ref':>7} {'peak MB':>8}  "
          f"{TARGET_DOMAIN + ' share':>13}  phases (s)")
    for tool, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        rss = statistics.median(r["max_rss_mb"] for r in results)
        share = statistics.median(composition(r["domains"])[TARGET_DOMAIN] for r in results)
        phases = {k: statistics.median(r["phases"][k] for r in results) for k in results[0]["phases"]}
        ratio = f"{base / seconds:6.1f}x" if base else "      -"
        print(f"{tool:<20} {len(results):>4} {seconds:>8.2f} {args.n / seconds:>9.0f} {ratio} {rss:>8.0f}  "
              f"{share:>13.3f}  " + " ".join(f"{k}={v:.2f}" for k, v in phases.items()))
    if "reference" in runs and "selectkit" in runs:
        ours, theirs = composition(runs["selectkit"][0]["domains"]), composition(runs["reference"][0]["domains"])
        gap = max(abs(ours[d] - theirs[d]) for d in DOMAINS)
        print("\ndomain composition, selectkit vs reference (first runs): "
              + ", ".join(f"{d} {ours[d]:.3f}/{theirs[d]:.3f}" for d in DOMAINS) + f"; max gap {gap:.3f}")


if __name__ == "__main__":
    main()
