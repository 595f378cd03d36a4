"""A lazy score as a run serves it: an oracle a selector calls with pool rows, which runs the score's
planned passes on those rows alone and the scorer on them (Quad's expensive influence read only at
the bandit's probes).

Each call is one batch: its rows are sorted by row key and hashed, and every pass step planned over
the stand-in source `probes:<score>` runs as a copy of itself over exactly those rows, its cache
entry `<planned step's key>-<rows' hash>` (kept by `cache prune --keep` with the step), sharded like
any pass. The scorer's values for the batch are cached the same way, beside the rows' keys, so a
rerun that asks the same rows reads them back. The rows the oracle evaluated (and how many batches)
go to the run's report and the manifest."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import numpy as np

from selectkit.contract.components import Score
from selectkit.contract.keyed_random import canonical_order
from selectkit.data.pool import shard_ranges
from selectkit.execution.artifacts import load_score, save_score
from selectkit.planning.steps import LazyPayload, PassPayload, Step


def rows_digest(keys: np.ndarray) -> str:
    """The identity of a batch: sha256 of its rows' keys in key order (not of their positions)."""
    keys = np.sort(np.asarray(keys, dtype=np.uint64))
    return hashlib.sha256(keys.astype("<u8").tobytes()).hexdigest()[:32]


def batch_key(key: str, digest: str) -> str:
    """A batch's entry `<step key>-<rows' hash>`: a part of the planned step's entry, so `cache prune
    --keep` keeps the batches of the steps a recipe's plan has."""
    return f"{key}-{digest}"


def pass_on_rows(template: Step, rows: int, digest: str) -> Step:
    """The planned pass step `template` (over the stand-in source) as a step over one batch of `rows`
    rows: the same provider and settings, its shards re-counted for the batch, its key the template's
    and the batch's."""
    payload = template.payload
    work = payload.work
    if work.row_shards:
        row_shards = len(shard_ranges(rows, work.shard_rows))
        work = replace(work, shards=work.points * row_shards, row_shards=row_shards,
                       label=f"{work.label} (a batch of {rows} rows)")
    return replace(template, id=f"{template.id}@{digest[:12]}", key=batch_key(template.key, digest),
                   shards=work.shards, payload=PassPayload(payload.provider, work, payload.needs), cached=False,
                   detail=dict(template.detail))


class LazyOracle:
    """Pool rows -> the lazy score at those rows (a Score over them, in the order asked). Rows already
    evaluated in this run are not computed again."""

    def __init__(self, run: Any, step: Step):  # run: the executor's Run (it serves the batches)
        self.run, self.step = run, step
        self.payload: LazyPayload = step.payload
        self.values: np.ndarray | None = None  # per pool row once the first batch is back (NaN: not asked)
        self.known = np.zeros(len(run.pool), dtype=bool)
        self.meta: Score | None = None  # orientation and columns, from the first batch
        self.batches = self.cached_batches = 0

    @property
    def evaluated(self) -> int:
        return int(self.known.sum())

    def __call__(self, rows: np.ndarray) -> Score:
        rows = np.asarray(rows, dtype=np.int64)
        todo = np.unique(rows[~self.known[rows]])
        if len(todo):
            self._batch(todo)
        assert self.meta is not None and self.values is not None
        return self.meta.with_values(self.values[rows])

    def _batch(self, rows: np.ndarray) -> None:
        run, payload = self.run, self.payload
        keys = run.pool.keys[rows]
        rows = rows[canonical_order(keys)]  # key order: the batch is the same whatever order it was asked in
        digest = rows_digest(keys)
        key = batch_key(self.step.key, digest)
        score = load_score(run.cache, key)
        if score is None:
            score = run.score_on_rows(self.step, rows, digest)
            save_score(run.cache, key, score, extra={"keys": run.pool.keys[rows]},  # which rows, by identity
                       label=f"lazy {payload.node.name}: a batch of {len(rows)} rows")
        else:
            self.cached_batches += 1
        self.batches += 1
        values = np.asarray(score.values, dtype=np.float64)
        if self.values is None:
            self.values = np.full((len(self.known), *values.shape[1:]), np.nan)
            self.meta = score.with_values(values[:0])
        self.values[rows] = values
        self.known[rows] = True
        run.lazy_progress(self)

    def report(self) -> dict[str, Any]:
        """What the manifest records: rows evaluated against the plan's bound, and batches."""
        return {"rows_evaluated": self.evaluated, "rows_planned_at_most": self.payload.most,
                "pool_rows": len(self.known), "batches": self.batches, "batches_cached": self.cached_batches}
