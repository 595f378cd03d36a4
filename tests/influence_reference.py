"""Ground truth for influence checks: L2-regularised multinomial logistic regression in float64
(Koh & Liang 2017, spec section 6), with exact Hessians and leave-one-out retraining.

Objective (sum form): L(W) = sum_i CE(softmax(W x_i), y_i) + lam/2 ||W||^2, W (C, d), x with a
trailing 1 (bias folded in), theta = W.ravel() (row-major, the layout of a Linear weight).
Removing z_j changes the test loss by about g_test^T H^-1 g_j (H of the sum form), which is the
positive-is-helpful attribution of spec section 0. numpy only; used by tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def load_split(name: str, n_train: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A scikit-learn bundled dataset (breast_cancer, digits, wine): fixed permutation, first
    `n_train` rows train; standardised with train statistics; a 1 appended to each row."""
    from sklearn import datasets

    data = getattr(datasets, f"load_{name}")()
    perm = np.random.default_rng(seed).permutation(len(data.target))
    x, y = data.data[perm].astype(np.float64), data.target[perm].astype(np.int64)
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0)
    x = (x - mu) / np.where(sd > 0, sd, 1.0)
    x = np.hstack([x, np.ones((len(x), 1))])
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class LogisticRegression:
    """A fitted model; `w` is (C, d)."""

    w: np.ndarray
    lam: float

    @property
    def classes(self) -> int:
        return self.w.shape[0]

    def probs(self, x: np.ndarray) -> np.ndarray:
        return softmax(x @ self.w.T)

    def losses(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        p = self.probs(x)
        return -np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None))

    def grads(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-example loss gradients (n, C*d), row-major (class, feature)."""
        r = self.probs(x)
        r[np.arange(len(y)), y] -= 1.0
        return (r[:, :, None] * x[:, None, :]).reshape(len(x), -1)

    def grad_sum(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """sum_i w_i g_i + lam theta: the gradient of the (weighted) sum-form objective, (C*d,)."""
        r = self.probs(x)
        r[np.arange(len(y)), y] -= 1.0
        return ((weights[:, None] * r).T @ x).ravel() + self.lam * self.w.ravel()

    def output_curvature(self, x: np.ndarray) -> np.ndarray:
        """diag(p) - p p^T per example: (n, C, C) (the GGN's output Hessian = true Fisher)."""
        p = self.probs(x)
        return np.einsum("nc,cd->ncd", p, np.eye(self.classes)) - p[:, :, None] * p[:, None, :]

    def hessian(self, x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Sum-form Hessian sum_i w_i (diag p_i - p_i p_i^T) (x) x_i x_i^T + lam I, (C*d, C*d)."""
        s = self.output_curvature(x)
        if weights is not None:
            s = s * weights[:, None, None]
        c, d = self.w.shape
        xx = (x[:, :, None] * x[:, None, :]).reshape(len(x), d * d)
        h = (s.reshape(len(x), c * c).T @ xx).reshape(c, c, d, d).transpose(0, 2, 1, 3).reshape(c * d, c * d)
        return h + self.lam * np.eye(c * d)


def fit(x: np.ndarray, y: np.ndarray, lam: float, classes: int | None = None, *, w0: np.ndarray | None = None,
        weights: np.ndarray | None = None, tol: float = 1e-10, max_iter: int = 100) -> LogisticRegression:
    """Damped Newton to machine precision (gradient norm <= tol); `weights` drops (0) or keeps examples."""
    c = classes if classes is not None else int(y.max()) + 1
    model = LogisticRegression(np.zeros((c, x.shape[1])) if w0 is None else w0.copy(), lam)
    wts = np.ones(len(x)) if weights is None else weights
    for _ in range(max_iter):
        grad = model.grad_sum(x, y, wts)
        if np.linalg.norm(grad) <= tol:
            break
        step = np.linalg.solve(model.hessian(x, wts), grad)
        t, old = 1.0, objective(model, x, y, wts)
        while t > 1e-8:
            trial = LogisticRegression(model.w - t * step.reshape(model.w.shape), lam)
            if objective(trial, x, y, wts) <= old + 1e-12:
                break
            t /= 2
        model = trial
    return model


def objective(model: LogisticRegression, x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    return float(weights @ model.losses(x, y) + model.lam / 2 * np.sum(model.w**2))


def leave_one_out(model: LogisticRegression, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                  indices: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Actual change of each test loss when training example j is removed: (len(indices), n_test).
    Each retrain is warm-started from the full optimum and iterates w <- w - H*^-1 grad L_-j(w)
    with the full-data Hessian at the optimum; its fixed point is the exact LOO optimum, and it
    converges linearly at a rate of about one example's share of H."""
    base = model.losses(x_test, y_test)
    h_inv = np.linalg.inv(model.hessian(x))
    c, d = model.w.shape
    out = np.zeros((len(indices), len(x_test)))
    for row, j in enumerate(indices):
        wts = np.ones(len(x))
        wts[j] = 0.0
        w = model.w.copy()
        for _ in range(200):
            grad = LogisticRegression(w, model.lam).grad_sum(x, y, wts)
            if np.linalg.norm(grad) <= tol:
                break
            w = w - (h_inv @ grad).reshape(c, d)
        out[row] = LogisticRegression(w, model.lam).losses(x_test, y_test) - base
    return out


def fisher_samples(model: LogisticRegression, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true Fisher in closed form as weighted samples: for each example i and class k, the
    output gradient p_i - e_k with weight p_ik. Returns a (n*C, d), g (n*C, C), weights (n*C,)."""
    p = model.probs(x)
    c = model.classes
    g = p[:, None, :] - np.eye(c)[None, :, :]  # (n, k, C)
    return np.repeat(x, c, axis=0), g.reshape(-1, c), p.reshape(-1)
