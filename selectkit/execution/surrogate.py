"""Score surrogates: an expensive scorer (the oracle) runs on a seeded label sample only, and a
cheap predictor on features (embeddings) fills in the rest of the pool.

After MATES (Yu et al. 2024, arXiv 2406.06046), NN-CIFT (Agarwal et al. 2025, arXiv 2502.09969)
and Influence Distillation (Nikdan et al. 2025, arXiv 2505.19051), avoiding two pitfalls of their
reference code: the label sample and its held-out part are drawn from (seed, row id) — never from
an unseeded generator or from positions — and the held-out agreement (Spearman, Pearson,
precision@budget) is only reported: the predictor's settings are chosen by cross-validation
inside the training part.

    sample = label_sample(keys, features, n_labels, holdout, seed, name, stratify, clusters)
    fit = fit_predict(features, oracle_values, sample, model, folds, seed, name)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from selectkit.contract.clusters import allocate, cluster_members, kmeans
from selectkit.contract.keyed_random import canonical_order, row_keys, uniform  # noqa: F401 - row_keys for callers
from selectkit.recipe.spec import default_clusters

RIDGE_PENALTIES = np.logspace(-3, 3, 13)
KNN_NEIGHBOURS = (1, 2, 5, 10, 20, 50)
MLP_DECAYS = (1e-4, 1e-2, 1.0)
MLP_HIDDEN = 128


@dataclass
class LabelSample:
    """Pool rows the oracle scores, which of them are held out, and their clusters."""

    rows: np.ndarray  # (L,) pool indices, in row-key order (whatever the pool's order)
    holdout: np.ndarray  # (L,) bool
    clusters: np.ndarray  # (L,) cluster of each labelled row (0 when not stratified)
    n_clusters: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {"rows": self.rows, "holdout": self.holdout, "clusters": self.clusters,
                "n_clusters": np.array([self.n_clusters])}

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> LabelSample:
        return cls(arrays["rows"], arrays["holdout"].astype(bool), arrays["clusters"], int(arrays["n_clusters"][0]))


def label_sample(keys: np.ndarray, features: np.ndarray | None, usable: np.ndarray, n_labels: int, holdout: float,
                 seed: int, name: str, stratify: str = "cluster", clusters: int | None = None) -> LabelSample:
    """A seeded, cluster-stratified sample of `n_labels` usable rows, and a held-out share of it.

    Everything is keyed by row identity: rows are put in row-key order before k-means, and each
    cluster's quota is filled by the rows with the smallest keyed uniform draw, so shuffling the
    pool gives the same sample."""
    candidates = np.flatnonzero(np.asarray(usable, dtype=bool))
    candidates = candidates[canonical_order(keys[candidates])]
    ck = keys[candidates]
    draw = uniform(seed, ("surrogate", name, "labels"), ck)
    if stratify == "cluster" and features is not None and len(candidates) > 1:
        from selectkit.contract.components import rng_for

        k = clusters or default_clusters(n_labels)
        x = np.asarray(features, dtype=np.float32)[candidates]
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        labels, _ = kmeans(x / np.where(norms > 0, norms, 1.0), k, rng_for(seed, "surrogate", name, "kmeans"))
        k = int(labels.max()) + 1
    else:
        labels, k = np.zeros(len(candidates), dtype=np.int64), 1
    members = cluster_members(labels, k)
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    quota = allocate(sizes, n_labels, sizes.astype(np.float64))
    chosen, cluster_of = [], []
    for c, m in enumerate(members):
        take = m[np.argsort(draw[m], kind="stable")[: quota[c]]]
        chosen.append(take)
        cluster_of.append(np.full(len(take), c, dtype=np.int64))
    picked = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    cluster_of = np.concatenate(cluster_of) if cluster_of else np.zeros(0, dtype=np.int64)
    # the held-out part: the same share of every cluster's labelled rows, again by keyed draw
    held = np.zeros(len(picked), dtype=bool)
    second = uniform(seed, ("surrogate", name, "holdout"), ck[picked])
    labelled = cluster_members(cluster_of, k)
    counts = np.array([len(m) for m in labelled], dtype=np.int64)
    want = int(round(holdout * len(picked)))
    hq = allocate(counts, want, counts.astype(np.float64))
    for c, m in enumerate(labelled):
        held[m[np.argsort(second[m], kind="stable")[: hq[c]]]] = True
    rows = candidates[picked]
    order = canonical_order(keys[rows])  # row-key order: the oracle sees the same rows in the same order
    return LabelSample(rows[order].astype(np.int64), held[order], cluster_of[order], k)


# ---------------------------------------------------------------- metrics


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (selectkit.evaluation.ranks), 0 where either side is constant."""
    from selectkit.evaluation.ranks import spearman as rho

    value = float(rho(a, b))
    return 0.0 if np.isnan(value) else value


def precision_at(truth: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """Share of the k best rows by `predicted` that are among the k best by `truth`."""
    k = max(1, min(int(k), len(truth)))
    top_true = set(np.argsort(-np.asarray(truth), kind="stable")[:k].tolist())
    top_pred = np.argsort(-np.asarray(predicted), kind="stable")[:k]
    return float(sum(int(i) in top_true for i in top_pred) / k)


def spearman_interval(rho: float, n: int) -> tuple[float, float]:
    """A 95% interval by Fisher's z with the Spearman standard error 1.03 / sqrt(n - 3)."""
    if n <= 3:
        return (-1.0, 1.0)
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    half = 1.96 * 1.03 / np.sqrt(n - 3)
    return (float(np.tanh(z - half)), float(np.tanh(z + half)))


def agreement(truth: np.ndarray, predicted: np.ndarray, k: int) -> dict[str, Any]:
    rho = spearman(truth, predicted)
    low, high = spearman_interval(rho, len(truth))
    return {"spearman": round(rho, 4), "spearman_95": [round(low, 4), round(high, 4)],
            "pearson": round(pearson(truth, predicted), 4),
            "precision_at_budget": round(precision_at(truth, predicted, k), 4), "k": int(k)}


# ---------------------------------------------------------------- predictors


def _folds(keys: np.ndarray, folds: int, seed: int, name: str) -> np.ndarray:
    """Fold of each training row, keyed by row id (balanced: ranks of a keyed draw, modulo folds)."""
    u = uniform(seed, ("surrogate", name, "folds"), keys)
    out = np.empty(len(keys), dtype=np.int64)
    out[np.argsort(u, kind="stable")] = np.arange(len(keys)) % folds
    return out


class Ridge:
    """Closed-form ridge on centred features; one penalty per output column, from the training
    part's cross-validation (every penalty of the grid from one SVD per fold)."""

    def __init__(self, grid: np.ndarray = RIDGE_PENALTIES):
        self.grid = np.asarray(grid, dtype=np.float64)

    def _path(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Centring terms and coefficients for every penalty: (x_mean, y_mean, coefs (P, D, T))."""
        xm, ym = x.mean(axis=0), y.mean(axis=0)
        u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
        uty = u.T @ (y - ym)
        scale = max(float((s ** 2).mean()), 1e-12)  # penalties relative to the features' energy
        coefs = np.stack([vt.T @ ((s / (s ** 2 + lam * scale))[:, None] * uty) for lam in self.grid])
        return xm, ym, coefs, s

    def choose(self, x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> list[int]:
        errors = np.zeros((len(self.grid), y.shape[1]))
        for f in np.unique(fold):
            tr, te = fold != f, fold == f
            xm, ym, coefs, _ = self._path(x[tr], y[tr])
            for p in range(len(self.grid)):
                errors[p] += (((x[te] - xm) @ coefs[p] + ym - y[te]) ** 2).sum(axis=0)
        best = errors.min(axis=0)  # the largest penalty within 0.1% of the best error (simplest model)
        return [int(np.flatnonzero(errors[:, t] <= best[t] * 1.001 + 1e-12).max()) for t in range(y.shape[1])]

    def fit_predict(self, x: np.ndarray, y: np.ndarray, fold: np.ndarray, queries: np.ndarray,
                    seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        picks = self.choose(x, y, fold)
        xm, ym, coefs, _ = self._path(x, y)
        w = np.stack([coefs[p][:, t] for t, p in enumerate(picks)], axis=1)
        out = np.empty((len(queries), y.shape[1]))
        for a in range(0, len(queries), 65536):
            out[a:a + 65536] = (queries[a:a + 65536] - xm) @ w + ym
        return out, {"penalty": [float(self.grid[p]) for p in picks]}


class KNN:
    """Mean oracle value of the k most cosine-similar labelled rows; k from the training part's CV."""

    def __init__(self, grid: tuple[int, ...] = KNN_NEIGHBOURS):
        self.grid = grid

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n > 0, n, 1.0)

    def _predict(self, train: np.ndarray, y: np.ndarray, queries: np.ndarray, ks: list[int]) -> list[np.ndarray]:
        kmax = min(max(ks), len(train))
        outs = [np.empty((len(queries), y.shape[1])) for _ in ks]
        rows = max(1, (64 << 20) // (8 * max(1, len(train))))
        for a in range(0, len(queries), rows):
            sims = queries[a:a + rows] @ train.T
            top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax] if kmax < len(train) else \
                np.tile(np.arange(len(train)), (len(sims), 1))
            order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            for out, k in zip(outs, ks):
                out[a:a + rows] = y[top[:, :min(k, kmax)]].mean(axis=1)
        return outs

    def fit_predict(self, x: np.ndarray, y: np.ndarray, fold: np.ndarray, queries: np.ndarray,
                    seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        x, queries = self._unit(x), self._unit(queries)
        ks = [k for k in self.grid if k <= max(1, int((fold != fold[0]).sum()))] or [1]
        errors = np.zeros(len(ks))
        for f in np.unique(fold):
            tr, te = fold != f, fold == f
            for i, pred in enumerate(self._predict(x[tr], y[tr], x[te], ks)):
                errors[i] += ((pred - y[te]) ** 2).sum()
        k = ks[int(np.argmin(errors))]
        return self._predict(x, y, queries, [k])[0], {"k": int(k)}


class MLP:
    """A one-hidden-layer MLP (NN-CIFT's 2-layer network) by scikit-learn; weight decay from CV."""

    def __init__(self, grid: tuple[float, ...] = MLP_DECAYS, hidden: int = MLP_HIDDEN):
        self.grid, self.hidden = grid, hidden

    def _fit(self, x: np.ndarray, y: np.ndarray, alpha: float, seed: int) -> Any:
        import warnings

        from sklearn.neural_network import MLPRegressor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the CV judges the result
            return MLPRegressor(hidden_layer_sizes=(self.hidden,), alpha=alpha, max_iter=300, random_state=seed,
                                learning_rate_init=1e-3).fit(x, y)

    def fit_predict(self, x: np.ndarray, y: np.ndarray, fold: np.ndarray, queries: np.ndarray,
                    seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        ym, ys = y.mean(axis=0), np.where(y.std(axis=0) > 0, y.std(axis=0), 1.0)
        z = (y - ym) / ys
        errors = np.zeros(len(self.grid))
        for f in np.unique(fold):
            tr, te = fold != f, fold == f
            for i, alpha in enumerate(self.grid):
                pred = self._fit(x[tr], z[tr], alpha, seed).predict(x[te]).reshape(int(te.sum()), -1)
                errors[i] += ((pred - z[te]) ** 2).sum()
        alpha = self.grid[int(np.argmin(errors))]
        pred = self._fit(x, z, alpha, seed).predict(queries).reshape(len(queries), -1)
        return pred * ys + ym, {"weight_decay": float(alpha)}


PREDICTORS = {"ridge": Ridge, "knn": KNN, "mlp": MLP}


@dataclass
class Fit:
    values: np.ndarray  # (N,) or (N, T): oracle values on labelled rows, predictions elsewhere
    oracle: np.ndarray  # (N,) bool
    report: dict[str, Any]


def fit_predict(features: np.ndarray, oracle: np.ndarray, sample: LabelSample, keys: np.ndarray, model: str,
                folds: int, seed: int, name: str, budget_share: float, columns: tuple[str, ...] = ()) -> Fit:
    """Fit `model` on the training part of the sample, report agreement on its held-out part, and
    return the pool's values: the oracle's where it ran, the prediction elsewhere."""
    x_all = np.asarray(features, dtype=np.float64)
    y = np.asarray(oracle, dtype=np.float64)
    vector = y.ndim == 1
    y2 = y[:, None] if vector else y
    ok = ~np.isnan(y2).any(axis=1)  # an oracle NaN (no scored token) neither trains nor is judged
    train = ~sample.holdout & ok
    held = sample.holdout & ok
    if int(train.sum()) < max(folds, 4):
        from selectkit.errors import DataError

        raise DataError(f"surrogate for {name!r}: only {int(train.sum())} labelled rows to train on; raise "
                        "`labels` (or lower `holdout`)")
    rows = sample.rows
    fold = _folds(keys[rows[train]], min(folds, int(train.sum())), seed, name)
    predictor = PREDICTORS[model]()
    queries = x_all
    pred, chosen = predictor.fit_predict(x_all[rows[train]], y2[train], fold, queries, seed)
    values = pred.copy()
    values[rows[ok]] = y2[ok]  # the oracle's own values where it ran
    values[rows[~ok]] = np.nan
    oracle_mask = np.zeros(len(x_all), dtype=bool)
    oracle_mask[rows] = True
    n_held = int(held.sum())
    k = max(1, int(round(budget_share * n_held)))
    names = columns or (("value",) if vector else tuple(f"column {j}" for j in range(y2.shape[1])))
    per_column = {}
    if n_held >= 3:
        for j, col in enumerate(names):
            per_column[col] = agreement(y2[held, j], pred[rows[held], j], k)
    report = {"model": model, "settings": chosen, "labels": int(len(rows)), "train": int(train.sum()),
              "holdout": n_held, "clusters": sample.n_clusters, "budget_share": round(float(budget_share), 6),
              "agreement": per_column}
    return Fit(values[:, 0] if vector else values, oracle_mask, report)


def describe_agreement(name: str, report: dict[str, Any]) -> list[str]:
    """Console lines: how well the surrogate tracks its oracle on the held-out rows."""
    head = (f"surrogate {name}: {report['model']} {report['settings']} on {report['train']} labelled rows, "
            f"judged on {report['holdout']} held-out rows ({report['labels']} labels, {report['clusters']} clusters)")
    lines = [head]
    for column, a in report["agreement"].items():
        label = "" if column == "value" else f"{column}: "
        lines.append(f"  {label}Spearman {a['spearman']:.3f} (95% {a['spearman_95'][0]:.2f} to "
                     f"{a['spearman_95'][1]:.2f}), Pearson {a['pearson']:.3f}, precision@{a['k']} "
                     f"{a['precision_at_budget']:.3f}")
    return lines


def agreement_warnings(name: str, report: dict[str, Any], warn_below: float) -> list[str]:
    """A warning per column whose held-out Spearman is below `warn_below` or not clearly above 0."""
    out = []
    for column, a in report["agreement"].items():
        if a["spearman"] < warn_below or a["spearman_95"][0] <= 0:
            where = "" if column == "value" else f" ({column})"
            out.append(f"surrogate for {name!r}{where} barely tracks its oracle: held-out Spearman "
                       f"{a['spearman']:.2f} (95% {a['spearman_95'][0]:.2f} to {a['spearman_95'][1]:.2f}, "
                       f"{report['holdout']} rows); its selection may be close to random: add labels or use "
                       "better features")
    if not report["agreement"]:
        out.append(f"surrogate for {name!r}: fewer than 3 held-out rows, agreement not measured")
    return out
