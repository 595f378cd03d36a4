"""Scoring math on per-example gradient features (numpy, float64), testable without a model.

Shapes: train features (N, D), target features (M, D), one array per checkpoint. Every
pairwise result is (N, M) with positive = helpful: the training example's gradient step
lowers the target's loss (spec section 0). Self-influence and GraNd are (N,).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from selectkit.plugin import SelectkitError, lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


def checkpoint_weights(lrs: Sequence[float]) -> np.ndarray:
    """LESS's checkpoint weights: learning rates renormalised to sum to 1."""
    w = np.asarray(lrs, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise SelectkitError(f"checkpoint learning rates must be non-negative with a positive sum, got {list(lrs)}",
                             hint="each checkpoint is weighted by its epoch's mean learning rate: give checkpoints "
                             "a positive `lr` in their checkpoint.json")
    return w / w.sum()


def _check(train: Sequence[np.ndarray], target: Sequence[np.ndarray], lrs: Sequence[float]) -> None:
    if not (len(train) == len(target) == len(lrs)) or not train:
        raise ValueError(f"need one train and one target array per checkpoint: {len(train)}, {len(target)}, {len(lrs)}")


def tracin(train: Sequence[np.ndarray], target: Sequence[np.ndarray], lrs: Sequence[float]) -> np.ndarray:
    """TracInCP (Pruthi et al. 2020): sum_c lr_c <g_c(z), g_c(z')>; (N, M). Positive = proponent."""
    _check(train, target, lrs)
    out = np.zeros((len(train[0]), len(target[0])))
    for x, y, lr in zip(train, target, lrs):
        out += lr * (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T)
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as LESS's `merge_and_normalize_info`."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def less(train_adam: Sequence[np.ndarray], target_sgd: Sequence[np.ndarray], lrs: Sequence[float]) -> np.ndarray:
    """LESS (Xia et al. 2024): sum_c w_c cos(Gamma_c(z), g_c(z')), w = lr / sum(lr); (N, M).

    Train features are Adam-preconditioned (see `adam.py`), target features plain SGD gradients.
    """
    _check(train_adam, target_sgd, lrs)
    out = np.zeros((len(train_adam[0]), len(target_sgd[0])))
    for x, y, w in zip(train_adam, target_sgd, checkpoint_weights(lrs)):
        out += w * (unit_rows(x) @ unit_rows(y).T)
    return out


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


def datainf_damping(train: np.ndarray, raw_size: int, scale: float = 0.1) -> float:
    """DataInf's layer-wise damping lambda_l = 0.1 * mean_i mean_j g_ij^2 (`lambda_const_param=10`),
    computed as 0.1 * mean ||g_i||^2 / raw_size so it is the same on projected features."""
    return scale * float(np.mean(np.sum(np.asarray(train, np.float64) ** 2, axis=1))) / raw_size


def datainf(train: np.ndarray, target: np.ndarray, slices: Sequence[tuple[int, int]] | None = None, *,
            raw_sizes: Sequence[int] | None = None, damping: float | Sequence[float] | None = None,
            damping_scale: float = 0.1) -> np.ndarray:
    """DataInf (Kwon et al. 2024): per block l,
    hvp_l = (1/(n lambda_l)) sum_i (v_l - (v_l.g_il)/(lambda_l + ||g_il||^2) g_il), score = sum_l g_kl . hvp_l.

    (N, M), positive = helpful (the reference code returns the negation). `slices` are the
    column ranges of the blocks (default: one block); `raw_sizes` their unprojected sizes for
    the default damping. An explicit damping of 0 is an error (division by zero, dattri's pitfall).
    """
    train = np.asarray(train, np.float64)
    target = np.asarray(target, np.float64)
    slices = list(slices) if slices is not None else [(0, train.shape[1])]
    raw_sizes = list(raw_sizes) if raw_sizes is not None else [b - a for a, b in slices]
    if damping is None:
        lams = [datainf_damping(train[:, a:b], r, damping_scale) for (a, b), r in zip(slices, raw_sizes)]
    else:
        lams = list(damping) if isinstance(damping, Sequence) else [float(damping)] * len(slices)
    if len(lams) != len(slices):
        raise ValueError(f"{len(lams)} damping values for {len(slices)} blocks")
    out = np.zeros((len(train), len(target)))
    n = len(train)
    for (a, b), lam in zip(slices, lams):
        if not lam > 0:
            raise ValueError(f"DataInf damping must be positive, got {lam} (0 divides by zero)")
        g, v = train[:, a:b], target[:, a:b]
        coef = (v @ g.T) / (lam + np.sum(g * g, axis=1))[None, :]  # (M, n)
        hvp = (v - coef @ g / n) / lam  # (M, d_l)
        out += g @ hvp.T
    return out
