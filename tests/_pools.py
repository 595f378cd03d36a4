"""Tiny in-memory pools and select contexts for the selector and normalizer tests."""

from __future__ import annotations

import numpy as np
import polars as pl

from selectkit.contract.components import NormalizeContext, Score, SelectContext
from selectkit.data.sources import Dataset


def pool(n: int, texts: list[str] | None = None, **columns) -> Dataset:
    """A pool of n examples with ids 0..n-1, optional texts and extra row columns."""
    rows = pl.DataFrame({"id": np.arange(n), **columns})
    return Dataset(name="pool", rows=rows, ids=rows["id"], texts=texts or ["x"] * n, fingerprint="test")


def select_ctx(score: Score | None, n: int | None = None, *, seed: int = 0, candidates=None,
               scores: dict[str, Score] | None = None, data: Dataset | None = None) -> SelectContext:
    n = n if n is not None else len(score.values)
    data = data if data is not None else pool(n)
    cands = np.arange(n) if candidates is None else np.asarray(candidates)
    return SelectContext(candidates=cands, pool=data, seed=seed, stage="stage0", score=score,
                         scores=scores or ({"s": score} if score is not None else {}))


def norm_ctx(n: int, **columns) -> NormalizeContext:
    return NormalizeContext(pool=pool(n, **columns), seed=0)
