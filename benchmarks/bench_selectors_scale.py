"""How every registered selector and normalizer scales with the pool: time and peak memory at 10k,
100k and 1M rows, and the growth exponent (log-log slope): `t exp` and `m exp` between the two
largest sizes (sub-millisecond runs at 10k are mostly overhead), `t fit` a least-squares fit over all.

Inputs are synthesized for the shape each component accepts: a vector, a matrix of 6 columns over
3 tasks, or features with D=8 plus 200 target rows. Selectors keep 10%, with the extra params in
EXTRA_PARAMS below. Each component runs in its own subprocess (isolation, a timeout); inside it,
one small warm-up run (lazy imports), timed runs (best of 3 up to 100k rows), and one run under
tracemalloc for the peak of Python/numpy allocations (faiss' and polars' own allocations are not
traced). Components that need what this script cannot synthesize (models, target datasets,
required params) are skipped, saying why.

    .venv/bin/python benchmarks/bench_selectors_scale.py            # 10k, 100k, 1M
    .venv/bin/python benchmarks/bench_selectors_scale.py --quick    # 10k, 100k
    .venv/bin/python benchmarks/bench_selectors_scale.py --only balanced topk
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
TASKS = ("a", "a", "b", "b", "c", "c")
DIM, TARGET_ROWS = 8, 200

# params this script adds so a component can run on synthetic inputs (on top of score + budget)
EXTRA_PARAMS: dict[str, dict[str, Any]] = {
    "threshold": {"min_quantile": 0.5},
    "clip": {"lower": 0.01, "upper": 0.99, "quantile": True},
    "log": {"eps": 10.0},  # the synthetic N(0, 1) scores need a shift into log's domain
    "stratified": {"column": "group"},
}


def synthesize(shape: str, n: int, seed: int = 0):
    """A Score of the given shape over n rows, and a pool Dataset with a `group` column."""
    import polars as pl

    from selectkit.contract.components import Score, Shape
    from selectkit.data.sources import Dataset

    rng = np.random.default_rng(seed)
    if shape == "vector":
        score = Score(rng.normal(size=n))
    elif shape == "matrix":
        score = Score(rng.normal(size=(n, len(TASKS))), Shape.MATRIX, columns=tuple(f"v{j}" for j in range(6)),
                      tasks=TASKS)
    else:
        centers = rng.normal(size=(4, DIM)) * 3
        pool = centers[rng.integers(0, 4, size=n)] + rng.normal(size=(n, DIM))
        target = centers[rng.integers(0, 2, size=TARGET_ROWS)] + rng.normal(size=(TARGET_ROWS, DIM))
        score = Score(pool.astype(np.float32), Shape.FEATURES, target_features={"t": target.astype(np.float32)})
    rows = pl.DataFrame({"id": np.arange(n), "group": (np.arange(n) % 10).astype(str)})
    data = Dataset(name="pool", rows=rows, ids=rows["id"], texts=["x y"] * n, fingerprint=f"bench-{n}")
    return score, data


def child(kind: str, name: str, sizes: list[int]) -> None:
    """Run one component at every size, printing one JSON line per size (or a skip line)."""
    from selectkit.contract.components import NormalizeContext, SelectContext
    from selectkit.contract.registry import load_registry

    def emit(**row: Any) -> None:
        print(json.dumps(row), flush=True)

    cls = load_registry().get(kind, name)
    shapes = sorted(s.value for s in cls.accepts)
    if kind == "selectors" and not cls.needs_score:
        shapes = ["vector"]
    shape = next((s for s in ("vector", "matrix", "features") if s in shapes), None)
    if shape is None:
        return emit(skip=f"accepts no shape this script synthesizes ({shapes})")
    params: dict[str, Any] = dict(EXTRA_PARAMS.get(name, {}))
    if kind == "selectors":
        if cls.needs_score:
            params["score"] = "s"
        if cls.budget_rule != "none":
            params["budget"] = "10%"
    try:
        component = cls(cls.Params.model_validate(params))
    except Exception as exc:  # required params this script cannot guess
        return emit(skip=f"params {params} rejected: {str(exc).splitlines()[0]}")

    def prepared(n: int):
        """A no-argument call running the component on fresh synthetic inputs of n rows."""
        score, data = synthesize(shape, n)
        if kind == "normalizers":
            return lambda: component.run(score, NormalizeContext(pool=data, seed=0))
        ctx = SelectContext(candidates=np.arange(n), pool=data, seed=0, stage=name, score=score, scores={"s": score})
        return lambda: component.run(ctx)

    try:
        prepared(1000)()  # warm-up: lazy imports (POT, faiss) and caches
    except Exception as exc:
        return emit(skip=f"cannot run on synthetic {shape} input: {type(exc).__name__}: {exc}")
    for n in sizes:
        run = prepared(n)
        seconds = math.inf
        for _ in range(3 if n <= 100_000 else 1):  # best of 3 where runs are short and noisy
            start = time.perf_counter()
            run()
            seconds = min(seconds, time.perf_counter() - start)
        tracemalloc.start()
        run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        emit(n=n, seconds=seconds, peak_mb=peak / 2**20, shape=shape)


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two positive points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k rows only")
    parser.add_argument("--only", nargs="*", help="component names to run (default: all registered)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per component (all sizes)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="*", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = list(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    if args.child:
        return child(args.child[0], args.child[1], sizes)

    from selectkit.contract.registry import load_registry

    registry = load_registry()
    results: dict[str, Any] = {}
    header = f"{'component':<32}{'shape':<9}" + "".join(f"{f'{n:,} s':>12}{'MB':>8}" for n in sizes)
    print(header + f"{'t exp':>7}{'t fit':>7}{'m exp':>7}")
    for kind in ("normalizers", "selectors"):
        for name in registry.names(kind):
            if args.only and name not in args.only:
                continue
            rows, note = [], ""
            command = [sys.executable, __file__, "--child", kind, name, "--sizes", *map(str, sizes)]
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout).stdout
            except subprocess.TimeoutExpired as exc:
                out, note = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), (
                    f"timed out after {args.timeout:g}s")
            for line in out.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    if "skip" in row:
                        note = "skipped: " + row["skip"]
                    else:
                        rows.append(row)
            if not rows and not note:
                note = "failed (no output)"
            ns, secs, mbs = ([r[k] for r in rows] for k in ("n", "seconds", "peak_mb"))
            t_exp, t_fit, m_exp = slope(ns[-2:], secs[-2:]), slope(ns, secs), slope(ns[-2:], mbs[-2:])
            results[f"{kind}:{name}"] = {"rows": rows, "time_exponent": t_exp, "time_exponent_fit": t_fit,
                                         "memory_exponent": m_exp, "note": note}
            cells = "".join(f"{r['seconds']:>12.3f}{r['peak_mb']:>8.1f}" for r in rows)
            cells += " " * 20 * (len(sizes) - len(rows))
            exps = f"{t_exp:>7.2f}{t_fit:>7.2f}{m_exp:>7.2f}" if t_exp is not None and m_exp is not None else " " * 21
            shape = rows[0]["shape"] if rows else ""
            print(f"{kind[:-1] + ' ' + name:<32}{shape:<9}{cells}{exps}  {note}".rstrip(), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
