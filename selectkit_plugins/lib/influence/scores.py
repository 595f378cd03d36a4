"""Scoring math on per-example gradient features (numpy), testable without a model.

Shapes: train features (N, D), target features (M, D), one per checkpoint. Train features may be
an array or the gradient store's `StoredFeatures`: every pairwise score streams over row blocks
of the pool with the targets in memory, so N x M is never held unless a caller asks for it (no
`reduce`); with `reduce` each block's (B, M) is reduced at once (e.g. to one column per target).
Products run in float64 for float32 features (as they always did) and in float32 for features
stored in half precision, accumulated over checkpoints in float64. Every pairwise result has
positive = helpful: the training example's gradient step lowers the target's loss (spec section 0).
Self-influence and GraNd are (N,).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from selectkit.plugin import SelectkitError, aligned_blocks, is_half, lazy_import, row_blocks, unit_rows

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


def checkpoint_weights(lrs: Sequence[float]) -> np.ndarray:
    """LESS's checkpoint weights: learning rates renormalised to sum to 1."""
    w = np.asarray(lrs, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise SelectkitError(f"checkpoint learning rates must be non-negative with a positive sum, got {list(lrs)}",
                             hint="each checkpoint is weighted by its epoch's mean learning rate: give checkpoints "
                             "a positive `lr` in their checkpoint.json")
    return w / w.sum()


Reduce = Callable[["np.ndarray"], "np.ndarray"]  # a block's (B, M) pairwise scores -> (B, C)


def _check(train: Sequence[Any], target: Sequence[np.ndarray], lrs: Sequence[float]) -> None:
    if not (len(train) == len(target) == len(lrs)) or not train:
        raise ValueError(f"need one train and one target array per checkpoint: {len(train)}, {len(target)}, {len(lrs)}")


def _precision(x: Any) -> Any:
    return np.float32 if is_half(x) else np.float64


def pairwise(train: Sequence[Any], target: Sequence[np.ndarray], weights: Sequence[float], *, cosine: bool = False,
             reduce: Reduce | None = None) -> np.ndarray:
    """sum_c w_c <f_c(z), g_c(z')> (of unit rows with `cosine`) for every train row z and target row
    z', one row block at a time: (N, M), or (N, C) with `reduce`. Train rows without a gradient
    (NaN) give NaN."""
    _check(train, target, weights)
    n = len(train[0])
    ys = [(unit_rows(y) if cosine else np.asarray(y, np.float64)) for y in target]
    out = None
    for blocks in aligned_blocks(train):
        lo, hi = blocks[0][0], blocks[0][1]
        acc = np.zeros((hi - lo, len(ys[0])))
        for (_, _, x), y, w, features in zip(blocks, ys, weights, train):
            kind = _precision(features)
            x = unit_rows(x, kind) if cosine else np.asarray(x, kind)
            acc += w * (x @ y.astype(kind, copy=False).T)
        part = acc if reduce is None else reduce(acc)
        if out is None:
            out = np.empty((n, part.shape[1]))
        out[lo:hi] = part
    return out if out is not None else np.zeros((0, len(ys[0]) if reduce is None else 0))


def tracin(train: Sequence[Any], target: Sequence[np.ndarray], lrs: Sequence[float], *, normalize: bool = False,
           reduce: Reduce | None = None) -> np.ndarray:
    """TracInCP (Pruthi et al. 2020): sum_c lr_c <g_c(z), g_c(z')>; (N, M). Positive = proponent.
    `normalize`: cosines instead of dot products (grad-cos)."""
    return pairwise(train, target, lrs, cosine=normalize, reduce=reduce)


GRAM_COLUMNS = 1024


def gram(train: Any) -> np.ndarray:
    """X^T X (k, k) summed in float64 over the row blocks of one checkpoint's train features (each
    block's product in float64, or float32 for half-precision features, as `pairwise`); rows without
    a gradient (NaN) are left out (they have no gradient to add)."""
    out, kind = None, _precision(train)
    for _, _, x in row_blocks(train):
        x = np.asarray(x, kind)
        if out is None:
            out = np.zeros((x.shape[1], x.shape[1]))
        x = x[np.isfinite(x).all(axis=1)]
        for a in range(0, x.shape[1], GRAM_COLUMNS):  # column strips: the product's temporary stays k x 1,024
            out[:, a:a + GRAM_COLUMNS] += x.T @ x[:, a:a + GRAM_COLUMNS]
    return out if out is not None else np.zeros((0, 0))


def trak_targets(train: Any, target: np.ndarray, damping: float, *, absolute: bool = False) -> np.ndarray:
    """(X^T X + lambda I)^-1 phi for every target row phi (M, k), X one checkpoint's train features
    streamed into X^T X. lambda = damping * trace(X^T X) / k (a fraction of its mean eigenvalue, so the
    same damping means the same on any projection's scale), or `damping` itself with `absolute`
    (traker's `lambda_reg`)."""
    if not damping >= 0 or (damping == 0 and not absolute):
        raise ValueError(f"TRAK damping must be positive, got {damping}")
    g = gram(train)
    target = np.asarray(target, np.float64)
    if g.shape != (target.shape[1], target.shape[1]):
        raise ValueError(f"train features of width {len(g)} for targets of width {target.shape[1]}")
    lam = float(damping) if absolute else float(damping) * float(np.trace(g)) / max(len(g), 1)
    if not lam > 0 and not absolute:  # every train gradient is zero: nothing to invert, nothing influences
        return np.zeros_like(target)
    g[np.diag_indices_from(g)] += lam
    try:
        return _solve_spd(g, target.T).T
    except np.linalg.LinAlgError as exc:
        raise SelectkitError(f"TRAK: X^T X + {lam:g} I is singular ({exc})",
                             hint="give TRAK a positive damping (lambda); with fewer pool rows than proj_dim "
                             "X^T X alone has no inverse") from None


def _solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^-1 b for a symmetric positive definite `a` that may be overwritten: scipy's Cholesky in place
    (half LU's work; no second k x k copy: 512 MB at k = 8192); where scipy is absent, numpy's Cholesky
    (which refuses a matrix that is not positive definite, as LU would not) and two solves."""
    try:
        from scipy.linalg import LinAlgError, cho_factor, cho_solve
    except ImportError:
        lower = np.linalg.cholesky(a)
        return np.linalg.solve(lower.T, np.linalg.solve(lower, b))
    try:
        # a is symmetric: its transpose is the same matrix in Fortran order, which LAPACK factors in place
        return cho_solve(cho_factor(a.T, overwrite_a=True, check_finite=False), b, check_finite=False)
    except LinAlgError as exc:  # not positive definite (damping 0 on a rank-deficient X^T X)
        raise np.linalg.LinAlgError(str(exc)) from None


def trak(train: Sequence[Any], target: Sequence[np.ndarray], weights: Sequence[float] | None = None, *,
         damping: float = 0.1, absolute: bool = False, reduce: Reduce | None = None) -> np.ndarray:
    """TRAK (Park et al. 2023) with f = -loss (so Q = 1): sum_c w_c X_c (X_c^T X_c + lambda_c I)^-1 phi_c
    for every train row and target row phi: (N, M), or (N, C) with `reduce`. Positive = helpful.

    Per checkpoint: X^T X accumulated in float64 over the pool's row blocks (memory k x k whatever
    N), one solve for the targets, then the scores stream as `pairwise` products of the train rows
    with the solved targets. `weights` default to TRAK's uniform mean over models. Unlike traker,
    the inverse is not rescaled by its mean absolute value (that changes only each checkpoint's
    scale, which we keep meaningful)."""
    weights = list(weights) if weights is not None else [1.0 / max(len(train), 1)] * len(train)
    _check(train, target, weights)
    solved = [trak_targets(x, y, damping, absolute=absolute) for x, y in zip(train, target)]
    return pairwise(train, solved, weights, reduce=reduce)


def less(train_adam: Sequence[Any], target_sgd: Sequence[np.ndarray], lrs: Sequence[float], *,
         reduce: Reduce | None = None) -> np.ndarray:
    """LESS (Xia et al. 2024): sum_c w_c cos(Gamma_c(z), g_c(z')), w = lr / sum(lr); (N, M).

    Train features are Adam-preconditioned (see `adam.py`), target features plain SGD gradients.
    """
    _check(train_adam, target_sgd, lrs)
    return pairwise(train_adam, target_sgd, checkpoint_weights(lrs), cosine=True, reduce=reduce)


def aggregate(scores: np.ndarray, groups: Sequence[str], within: str = "mean") -> tuple[np.ndarray, list[str]]:
    """Columns grouped by label (a target, or a subtask of one): (N, G) of the mean or max of each
    group's columns, groups in first-seen order."""
    if within not in ("mean", "max"):
        raise ValueError(f"aggregate must be mean or max, got {within!r}")
    labels = np.asarray(groups)
    if len(labels) != scores.shape[1]:
        raise ValueError(f"{len(labels)} group labels for {scores.shape[1]} columns")
    names = list(dict.fromkeys(groups))
    reduce = np.nanmean if within == "mean" else np.nanmax
    with warnings.catch_warnings():  # a pool row without gradient (all NaN) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([reduce(scores[:, labels == g], axis=1) for g in names], axis=1), names


def less_task_scores(scores: np.ndarray, subtasks: Sequence[str], within: str = "mean") -> np.ndarray:
    """LESS's task score (`matching.py`): mean (or max) over each subtask's examples, then the max
    over subtasks; (N,). Unlike the reference's reshape, subtasks may have unequal sizes."""
    grouped, _ = aggregate(scores, subtasks, within)
    return grouped.max(axis=1)


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """LESS's `write_selected_data`: indices of the int(fraction * N) highest scores, best first."""
    k = int(fraction * len(scores))
    return np.argsort(-np.asarray(scores), kind="stable")[:k]


def self_influence(norms: Sequence[np.ndarray], lrs: Sequence[float]) -> np.ndarray:
    """TracIn self-influence sum_c lr_c ||g_c(z)||^2 (the PRESENCE signal); (N,)."""
    if len(norms) != len(lrs) or not norms:
        raise ValueError("need one norm array per checkpoint learning rate")
    return sum(lr * np.asarray(n, np.float64) ** 2 for n, lr in zip(norms, lrs))


def grand(norms: Sequence[np.ndarray]) -> np.ndarray:
    """GraNd (Paul et al. 2021): mean over checkpoints (or runs) of ||g(z)||; (N,)."""
    if not norms:
        raise ValueError("need at least one norm array")
    return np.mean([np.asarray(n, np.float64) for n in norms], axis=0)


def datainf_damping(train: Any, raw_size: int, scale: float = 0.1, columns: tuple[int, int] | None = None) -> float:
    """DataInf's layer-wise damping lambda_l = 0.1 * mean_i mean_j g_ij^2 (`lambda_const_param=10`),
    computed as 0.1 * mean ||g_i||^2 / raw_size so it is the same on projected features (over the
    feature `columns` [a, b) of one block; streamed over row blocks)."""
    total, rows = 0.0, 0
    for _, _, x in row_blocks(train):
        x = np.asarray(x if columns is None else x[:, columns[0]:columns[1]], np.float64)
        total += float(np.sum(x * x))
        rows += len(x)
    return scale * (total / max(rows, 1)) / raw_size


def datainf_hvps(train: Any, target: np.ndarray, slices: Sequence[tuple[int, int]] | None = None, *,
                 raw_sizes: Sequence[int] | None = None, damping: float | Sequence[float] | None = None,
                 damping_scale: float = 0.1) -> list[tuple[tuple[int, int], np.ndarray]]:
    """DataInf's per-block inverse-Fisher products of the targets, one streamed pass over the train
    rows: hvp_l = (1/lambda_l) (v_l - (1/n) sum_i (v_l.g_il)/(lambda_l + ||g_il||^2) g_il), (M, d_l)
    per block l = columns [a, b). An explicit damping of 0 is an error (dattri's division by zero)."""
    target = np.asarray(target, np.float64)
    width = target.shape[1]
    slices = list(slices) if slices is not None else [(0, width)]
    raw_sizes = list(raw_sizes) if raw_sizes is not None else [b - a for a, b in slices]
    if damping is None:
        lams = [datainf_damping(train, r, damping_scale, (a, b)) for (a, b), r in zip(slices, raw_sizes)]
    else:
        lams = list(damping) if isinstance(damping, Sequence) else [float(damping)] * len(slices)
    if len(lams) != len(slices):
        raise ValueError(f"{len(lams)} damping values for {len(slices)} blocks")
    for lam in lams:
        if not lam > 0:
            raise ValueError(f"DataInf damping must be positive, got {lam} (0 divides by zero)")
    sums = [np.zeros((len(target), b - a)) for a, b in slices]
    n = 0
    for _, _, x in row_blocks(train):
        x = np.asarray(x, np.float64)
        n += len(x)
        for (a, b), lam, acc in zip(slices, lams, sums):
            g, v = x[:, a:b], target[:, a:b]
            coef = (v @ g.T) / (lam + np.sum(g * g, axis=1))[None, :]  # (M, B)
            acc += coef @ g
    return [((a, b), (target[:, a:b] - acc / max(n, 1)) / lam) for (a, b), lam, acc in zip(slices, lams, sums)]


def datainf(train: Sequence[Any] | Any, target: Sequence[np.ndarray] | np.ndarray,
            slices: Sequence[tuple[int, int]] | None = None, *, raw_sizes: Sequence[int] | None = None,
            damping: float | Sequence[float] | None = None, damping_scale: float = 0.1,
            weights: Sequence[float] | None = None, reduce: Reduce | None = None) -> np.ndarray:
    """DataInf (Kwon et al. 2024): per block l,
    hvp_l = (1/(n lambda_l)) sum_i (v_l - (v_l.g_il)/(lambda_l + ||g_il||^2) g_il), score = sum_l g_kl . hvp_l.

    (N, M), positive = helpful (the reference code returns the negation). `slices` are the
    column ranges of the blocks (default: one block); `raw_sizes` their unprojected sizes for
    the default damping. Several checkpoints (lists of train and target features, `weights`) add
    up with those weights before `reduce`. Streams: one pass per checkpoint for the damping, one for
    the inverse-Fisher products, one for the scores.
    """
    many = isinstance(train, list | tuple)
    trains, targets = (list(train), list(target)) if many else ([train], [target])
    weights = list(weights) if weights is not None else [1.0] * len(trains)
    _check(trains, targets, weights)
    hvps = [datainf_hvps(x, y, slices, raw_sizes=raw_sizes, damping=damping, damping_scale=damping_scale)
            for x, y in zip(trains, targets)]
    n = len(trains[0])
    out = None
    for blocks in aligned_blocks(trains):
        lo, hi = blocks[0][0], blocks[0][1]
        acc = np.zeros((hi - lo, len(targets[0])))
        for (_, _, x), per_block, w in zip(blocks, hvps, weights):
            x = np.asarray(x, np.float64)
            for (a, b), hvp in per_block:
                acc += w * (x[:, a:b] @ hvp.T)
        part = acc if reduce is None else reduce(acc)
        if out is None:
            out = np.empty((n, part.shape[1]))
        out[lo:hi] = part
    return out
