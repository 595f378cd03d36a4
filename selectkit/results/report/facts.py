"""The numbers report.html shows, computed from a finished run's files: funnel, composition,
score and length summaries, correlations, example picks and warnings. Plain data, no HTML."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selectkit.results.rundir import Run, Stage

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
MAX_GROUPS = 40  # composition rows shown; the rest are summed into one "(other)" row
MAX_CORRELATED = 24  # score columns in the correlation matrix


@dataclass(frozen=True)
class FunnelRow:
    stage: str
    use: str
    candidates: int
    kept: int
    tokens_in: int | None
    tokens_kept: int | None
    seconds: float | None
    status: str | None


def funnel(run: Run) -> list[FunnelRow]:
    """Examples (and tokens, when texts are known) entering and leaving each selector stage."""
    tokens = run.tokens
    rows = [FunnelRow("pool", "", run.size, run.size, _sum(tokens, None), _sum(tokens, None), None, None)]
    for stage in run.stages:
        cand, kept = run.candidates(stage), run.survivors(stage)
        rows.append(FunnelRow(stage.label, stage.use, int(cand.sum()), int(kept.sum()), _sum(tokens, cand),
                              _sum(tokens, kept), stage.seconds, stage.status))
    return rows


def _sum(tokens: np.ndarray | None, mask: np.ndarray | None) -> int | None:
    if tokens is None:
        return None
    return int(tokens.sum() if mask is None else tokens[mask].sum())


@dataclass(frozen=True)
class GroupRow:
    group: str
    pool: int
    selected: int
    dropped: dict[str, int]  # stage label -> rows of this group it dropped

    def shares(self, pool_total: int, selected_total: int) -> tuple[float, float, float | None]:
        """(share of the pool, share of the selection, enrichment = selection share / pool share)."""
        p = self.pool / pool_total if pool_total else 0.0
        s = self.selected / selected_total if selected_total else 0.0
        return p, s, (s / p if p else None)


def composition(run: Run, groups: np.ndarray) -> list[GroupRow]:
    """Pool vs selection counts per group (sorted by name; beyond MAX_GROUPS the smallest pool groups
    are summed into '(other)'), with how many of each group every stage dropped."""
    names, inverse = np.unique(groups.astype(str), return_inverse=True)
    pool = np.bincount(inverse, minlength=len(names))
    chosen = np.bincount(inverse[run.selected], minlength=len(names))
    dropped = {s.label: np.bincount(inverse[run.drop_stage == s.index], minlength=len(names)) for s in run.stages}
    order = np.arange(len(names))
    if len(names) > MAX_GROUPS:
        biggest = np.sort(np.argsort(-pool, kind="stable")[: MAX_GROUPS - 1])
        rest = np.setdiff1d(order, biggest)
        rows = [GroupRow(str(names[i]), int(pool[i]), int(chosen[i]), {k: int(v[i]) for k, v in dropped.items()})
                for i in biggest]
        rows.append(GroupRow(f"(other: {len(rest)} groups)", int(pool[rest].sum()), int(chosen[rest].sum()),
                             {k: int(v[rest].sum()) for k, v in dropped.items()}))
        return rows
    return [GroupRow(str(names[i]), int(pool[i]), int(chosen[i]), {k: int(v[i]) for k, v in dropped.items()})
            for i in order]


def target_groups(run: Run) -> dict[str, np.ndarray]:
    """Per multi-target score, the target each example scores highest on (its closest target)."""
    out = {}
    for name in dict.fromkeys(run.score_name(c) for c in run.score_columns):
        columns = run.columns_of(name)
        if len(columns) < 2 or any(c == f"score.{name}" for c in columns):
            continue
        matrix = np.column_stack([run.values(c) for c in columns])
        filled = np.where(np.isnan(matrix), -np.inf, matrix)
        labels = np.array([c.removeprefix(f"score.{name}.") for c in columns], dtype=object)
        out[name] = labels[np.argmax(filled, axis=1)]
    return out


@dataclass(frozen=True)
class Summary:
    count: int
    nan: int
    mean: float | None
    std: float | None
    minimum: float | None
    maximum: float | None
    quantiles: tuple[float | None, ...]


def summarize(values: np.ndarray) -> Summary:
    """Count, NaNs, mean, std, min, max and QUANTILES of the finite values."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return Summary(len(values), int(np.isnan(values).sum()), None, None, None, None, (None,) * len(QUANTILES))
    return Summary(len(values), int(np.isnan(values).sum()), float(finite.mean()), float(finite.std()),
                   float(finite.min()), float(finite.max()), tuple(float(q) for q in np.quantile(finite, QUANTILES)))


def spearman(run: Run) -> tuple[list[str], np.ndarray]:
    """Spearman correlation between score columns over the pool (pairwise-complete rows)."""
    columns = run.score_columns[:MAX_CORRELATED]
    ranks = [_ranks(run.values(c)) for c in columns]
    k = len(columns)
    matrix = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(i, k):
            both = ~np.isnan(ranks[i]) & ~np.isnan(ranks[j])
            if both.sum() < 3:
                continue
            a, b = ranks[i][both], ranks[j][both]
            if a.std() == 0 or b.std() == 0:
                continue
            matrix[i, j] = matrix[j, i] = float(np.corrcoef(a, b)[0, 1])
    return columns, matrix


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks of the non-NaN values (NaN stays NaN)."""
    import polars as pl

    ranks = pl.Series(values).fill_nan(None).rank("average").cast(float).fill_null(np.nan)
    return ranks.to_numpy().astype(np.float64)


@dataclass(frozen=True)
class Example:
    row: int
    id: str
    selected: bool
    rank: int | None
    dropped_by: str | None
    scores: dict[str, float]
    text: str | None


def examples(run: Run, per_kind: int = 8) -> dict[str, list[Example]]:
    """Top and bottom of the selection, the best candidates just below the last cut, and a seeded random draw."""
    order = np.argsort(np.where(run.rank > 0, run.rank, np.iinfo(np.int64).max), kind="stable")
    selected = order[: int(run.selected.sum())]
    picks = {"top": selected[:per_kind], "bottom": selected[-per_kind:][::-1] if len(selected) else selected}
    below = just_below(run, per_kind)
    if below is not None:
        picks["below the cut-off"] = below
    rng = np.random.default_rng(run.seed)
    picks["random"] = np.sort(rng.choice(run.size, size=min(per_kind, run.size), replace=False))
    return {kind: [example(run, int(i)) for i in rows] for kind, rows in picks.items()}


def cut_stage(run: Run) -> tuple[Stage, np.ndarray] | None:
    """The last stage that dropped rows on a vector score, and its score values."""
    for stage in reversed(run.stages):
        columns = run.columns_of(stage.score) if stage.score else []
        if len(columns) == 1 and (run.drop_stage == stage.index).any():
            return stage, run.values(columns[0])
    return None


def just_below(run: Run, n: int) -> np.ndarray | None:
    """Rows the last cutting stage dropped that came closest to being kept (by its score)."""
    found = cut_stage(run)
    if found is None:
        return None
    stage, values = found
    dropped = np.flatnonzero((run.drop_stage == stage.index) & ~np.isnan(values))
    if len(dropped) == 0:
        return None
    cut = run.cut(stage)
    kept = run.survivors(stage) & ~np.isnan(values)
    if cut is not None and cut.low is not None and cut.high is None:
        higher = True
    elif cut is not None and cut.high is not None and cut.low is None:
        higher = False
    else:  # no clean cut: the manifest's orientation, else whether kept rows score higher on average
        recorded = ((run.manifest.get("scores") or {}).get(stage.score) or {}).get("higher_is_better")
        higher = recorded if isinstance(recorded, bool) else bool(
            kept.any() and values[kept].mean() >= values[dropped].mean())
    key = -values[dropped] if higher else values[dropped]
    return dropped[np.argsort(key, kind="stable")[:n]]


def example(run: Run, row: int, limit: int | None = None) -> Example:
    texts = run.texts
    text = texts[row] if texts is not None else None
    if text is not None and limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    drop = run.dropped_by[row]
    return Example(row, str(run.table["id"][row]), bool(run.selected[row]), int(run.rank[row]) or None,
                   None if drop is None else str(drop), {c: float(run.values(c)[row]) for c in run.score_columns},
                   text)


def warnings(run: Run, groups: np.ndarray | None) -> list[str]:
    """What a reader should look at: NaN or constant scores, ties at a cut, no-op stages, wiped-out groups."""
    out = []
    for column in run.score_columns:
        values = run.values(column)
        nan = int(np.isnan(values).sum())
        if nan:
            out.append(f"{column}: {nan:,} of {run.size:,} examples have no score (NaN)")
        finite = values[np.isfinite(values)]
        if len(finite) > 1 and finite.min() == finite.max():
            out.append(f"{column}: every example has the same score ({finite[0]:.6g}); it cannot rank anything")
    for stage in run.stages:
        cand, kept = int(run.candidates(stage).sum()), int(run.survivors(stage).sum())
        if cand and kept == cand:
            out.append(f"stage {stage.label}: kept all {cand:,} candidates (it changed nothing)")
        if cand and kept == 0:
            out.append(f"stage {stage.label}: dropped every candidate")
        cut = run.cut(stage)
        if cut is not None and cut.ties:
            out.append(f"stage {stage.label}: {cut.ties:,} dropped candidates tie with the cut-off "
                       f"({cut.describe()}); which of them were kept is a tie-break, not a score difference")
    if groups is not None:
        for row in composition(run, groups):
            if row.pool >= 5 and row.selected == 0 and not row.group.startswith("(other"):
                stage = max(row.dropped, key=lambda k: row.dropped[k]) if row.dropped else None
                out.append(f"{run.summarize_by} = {row.group}: none of its {row.pool:,} pool examples were selected"
                           + (f" (most dropped by {stage})" if stage else ""))
    return out


def projection(run: Run, ids, features: np.ndarray, max_points: int = 3000
               ) -> tuple[np.ndarray, np.ndarray, int] | None:
    """PCA to 2-D of a seeded sample of the run's examples that have features: (xy, selected, matched).
    Up to half the sample is selected examples, so a small selection still shows."""
    where = run.index_of([str(i) for i in ids])
    pairs = [(k, row) for k, row in enumerate(where.values()) if row is not None]
    if not pairs:
        return None
    feature_rows = np.array([k for k, _ in pairs], dtype=np.int64)
    run_rows = np.array([r for _, r in pairs], dtype=np.int64)
    chosen = run.selected[run_rows]
    rng = np.random.default_rng(run.seed)
    take_sel = np.flatnonzero(chosen)
    take_sel = take_sel if len(take_sel) <= max_points // 2 else rng.choice(take_sel, max_points // 2, replace=False)
    rest = np.flatnonzero(~chosen)
    room = max_points - len(take_sel)
    rest = rest if len(rest) <= room else rng.choice(rest, room, replace=False)
    sample = np.sort(np.concatenate([take_sel, rest]))
    x = np.asarray(features[feature_rows[sample]], dtype=np.float64)
    x = x - x.mean(axis=0)
    if x.shape[1] >= 2 and len(x) >= 2:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        vt = vt[:2] * np.sign(vt[:2, :1] + (vt[:2, :1] == 0))  # fixed sign: the same picture every build
        xy = x @ vt.T
    else:
        xy = np.column_stack([x[:, 0], np.zeros(len(x))])
    return xy, chosen[sample], len(pairs)
