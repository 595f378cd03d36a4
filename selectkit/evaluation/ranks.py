"""Rank statistics shared by LDS (a Spearman per held-out example over retrained subsets, many at
once along an axis) and the surrogate's agreement with its oracle: average ranks with ties sharing
their mean rank (scipy.stats.rankdata's 'average'), and Spearman's rho from them."""

from __future__ import annotations

import numpy as np


def average_ranks(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Ranks 1..n along `axis`, ties given their average rank (scipy.stats.rankdata's 'average')."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    n = a.shape[-1]
    order = np.argsort(a, axis=-1, kind="stable")
    s = np.take_along_axis(a, order, -1)
    new = np.ones(s.shape, dtype=bool)
    new[..., 1:] = s[..., 1:] != s[..., :-1]
    last = np.ones(s.shape, dtype=bool)
    last[..., :-1] = new[..., 1:]
    idx = np.broadcast_to(np.arange(n), s.shape)
    start = np.maximum.accumulate(np.where(new, idx, 0), axis=-1)
    end = np.flip(np.minimum.accumulate(np.flip(np.where(last, idx, n - 1), -1), axis=-1), -1)
    ranks = np.empty(s.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, -1)
    return np.moveaxis(ranks, -1, axis)


def spearman(x: np.ndarray, y: np.ndarray, axis: int = 0) -> np.ndarray:
    """Spearman's rho along `axis` (ties averaged); NaN where either side is constant."""
    rx, ry = average_ranks(x, axis), average_ranks(y, axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    num = (rx * ry).sum(axis=axis)
    den = np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
