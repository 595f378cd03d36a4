"""Optimal-transport building blocks for `optimal_transport` (TAROT): cosine ground cost, per-target
neighbour lists (faiss or chunked numpy), OT distances and dual potentials with bounded memory.

Memory rule: no (pool x target) matrix is built. Neighbour search holds (targets x max_rank) lists
and score blocks of at most `memory_mb`; an OT problem is solved on at most `max_points` points per
side (a seeded subsample above that), and the potential of every source point is then recovered
from the target potentials by the (soft) c-transform, chunk by chunk.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selectkit.plugin import Params, lazy_import, require

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class OTSettings(Params):
    solver: Literal["exact", "sinkhorn"] = Field(
        "exact", description="exact: network simplex (POT emd); sinkhorn: entropic, log-domain (POT)")
    reg: float = Field(0.01, gt=0, description="sinkhorn entropic regularisation, on costs in [0, 2]")
    max_points: int = Field(2000, ge=10, description="points per side of one OT solve; larger sets are subsampled")
    minibatches: int = Field(4, ge=1, description="subsample solves averaged for a distance above max_points")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (norm clamped at 1e-12), float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """TAROT's ground cost between unit rows: sqrt(|2 - 2 cos|), the Euclidean distance."""
    return np.sqrt(np.abs(2.0 - 2.0 * (x @ y.T)))


def neighbours(pool: np.ndarray, targets: np.ndarray, k: int, *, backend: str = "auto",
               memory_mb: float = 1024) -> tuple[np.ndarray, np.ndarray, str]:
    """For every target row, the k pool rows of highest cosine (unit rows), best first:
    indices (m, k), similarities (m, k) and the backend used. faiss IndexFlatIP when installed
    (backend auto|faiss), else numpy over target blocks whose (block x n) scores fit `memory_mb`."""
    k = min(k, len(pool))
    if backend in ("auto", "faiss"):
        try:
            import faiss
        except ImportError:
            if backend == "faiss":
                require("faiss", "faiss", "optimal_transport")
        else:
            index = faiss.IndexFlatIP(pool.shape[1])
            index.add(np.ascontiguousarray(pool, dtype=np.float32))
            sims, idx = index.search(np.ascontiguousarray(targets, dtype=np.float32), k)
            return idx.astype(np.int64), sims.astype(np.float64), "faiss"
    pool32 = np.asarray(pool, dtype=np.float32)
    block = max(1, int(memory_mb * 2**20 // (16 * len(pool))))  # float32 scores + int64 partition
    idx = np.empty((len(targets), k), dtype=np.int64)
    sims = np.empty((len(targets), k), dtype=np.float64)
    for start in range(0, len(targets), block):
        s = np.asarray(targets[start:start + block], dtype=np.float32) @ pool32.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (len(s), 1))
        top_s = np.take_along_axis(s, top, axis=1)
        order = np.lexsort((top, -top_s), axis=1)
        idx[start:start + block] = np.take_along_axis(top, order, axis=1)
        sims[start:start + block] = np.take_along_axis(top_s, order, axis=1)
    return idx, sims, "numpy"


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, size=limit, replace=False))


def _solve(x: np.ndarray, y: np.ndarray, settings: OTSettings) -> tuple[float, np.ndarray]:
    """OT cost and target potentials g between two small uniform point sets."""
    ot = require("ot", "ot", "optimal_transport")
    a, b = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    m = cost(x, y)
    if settings.solver == "exact":
        plan, log = ot.emd(a, b, m, numItermax=10_000_000, log=True)
        return float(log["cost"]), np.asarray(log["v"])
    plan, log = ot.sinkhorn(a, b, m, settings.reg, method="sinkhorn_log", numItermax=10_000, stopThr=1e-7, log=True)
    return float(np.sum(plan * m)), settings.reg * np.asarray(log["log_v"])


def ot_distance(x: np.ndarray, y: np.ndarray, settings: OTSettings, rng: np.random.Generator) -> float:
    """OT cost between unit-row point sets with uniform weights (emd2-like); above `max_points`
    per side, the mean over `minibatches` seeded subsample solves (minibatch OT, biased upward)."""
    if len(x) <= settings.max_points and len(y) <= settings.max_points:
        return _solve(x, y, settings)[0]
    costs = [_solve(x[_subsample(len(x), settings.max_points, rng)], y[_subsample(len(y), settings.max_points, rng)],
                    settings)[0] for _ in range(settings.minibatches)]
    return float(np.mean(costs))


def source_potentials(x: np.ndarray, y: np.ndarray, settings: OTSettings, rng: np.random.Generator,
                      memory_mb: float = 1024) -> np.ndarray:
    """Dual potential f of every row of x in OT(x, y): solved on subsamples of at most
    `max_points`, then f(x) = min_j C(x, y_j) - g_j (exact) or its soft-min with temperature
    `reg` (sinkhorn) over the target subsample, for all rows in memory-bounded chunks.
    A high potential means far from the target."""
    xs = x[_subsample(len(x), settings.max_points, rng)]
    ys = y[_subsample(len(y), settings.max_points, rng)]
    _, g = _solve(xs, ys, settings)
    out = np.empty(len(x))
    chunk = max(1, int(memory_mb * 2**20 // (32 * len(ys))))  # a few float64 temporaries per cell
    for start in range(0, len(x), chunk):
        reduced = cost(x[start:start + chunk], ys) - g
        if settings.solver == "exact":
            out[start:start + chunk] = reduced.min(axis=1)
        else:
            low = reduced.min(axis=1, keepdims=True)
            soft = np.log(np.exp(-(reduced - low) / settings.reg).sum(axis=1))
            out[start:start + chunk] = low[:, 0] - settings.reg * soft
    return out

