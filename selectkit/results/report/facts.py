"""The numbers report.html shows, computed from a finished run's files by streaming statistics:
funnel and composition from group-by counts, score and length summaries from aggregates and exact
quantiles (histograms narrowed pass by pass), correlations on a keyed sample of rows, examples
fetched by row. Plain data, no HTML; memory does not grow with the pool."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from selectkit.results.quantiles import SELECTED, lerp, order_statistics
from selectkit.results.rundir import STREAMING, Cut, Draw, Run, Stage

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
PLOT_QUANTILES = (0.001, 0.999)  # a distribution is drawn between these (outliers pile up at the edges)
PLOT_EXACT = 2000  # up to this many values a distribution is drawn from its min to its max
MAX_GROUPS = 40  # composition rows shown; the rest are summed into one "(other)" row
MAX_CORRELATED = 24  # score columns in the correlation matrix
SAMPLE_ROWS = 50_000  # rows the correlations are computed on (a keyed sample of larger tables)
PLOT_BINS = 40
EXAMPLES = 8  # rows per kind of example
MAP_POINTS = 3000  # examples on the embedding map
POOL, SELECTION = "pool", SELECTED


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


@dataclass(frozen=True)
class Summary:
    count: int
    nan: int
    mean: float | None
    std: float | None
    minimum: float | None
    maximum: float | None
    quantiles: tuple[float | None, ...]


@dataclass(frozen=True)
class Histogram:
    """Counts of the pool and of the selection in PLOT_BINS equal bins over `edges` (values outside clipped in)."""

    edges: np.ndarray
    pool: np.ndarray
    selection: np.ndarray


@dataclass(frozen=True)
class Example:
    row: int
    id: str
    selected: bool
    rank: int | None
    dropped_by: str | None
    scores: dict[str, float]
    text: str | None


@dataclass(frozen=True)
class Projection:
    xy: np.ndarray
    selected: np.ndarray
    matched: int  # examples that have features


class Facts:
    """Everything the page shows about one run, each computed once, on first use."""

    def __init__(self, run: Run, embeddings: tuple | None = None):
        self.run = run
        self.embeddings = embeddings  # (ids or None for row order, (N, D) array)

    # funnel ---------------------------------------------------------------------------------
    @cached_property
    def funnel(self) -> list[FunnelRow]:
        """Examples (and whitespace tokens, when the table counts them) entering and leaving each stage."""
        run, counts = self.run, self.run.counts
        tokens = counts.tokens_of(None)
        rows = [FunnelRow("pool", "", run.size, run.size, tokens, tokens, None, None)]
        for stage in run.stages:
            rows.append(FunnelRow(stage.label, stage.use, counts.candidates(stage), counts.survivors(stage),
                                  counts.tokens_of(stage), counts.tokens_of(stage, survivors=True), stage.seconds,
                                  stage.status))
        return rows

    # composition ------------------------------------------------------------------------------
    def composition(self, group, names: dict | None = None) -> list[GroupRow]:
        """Pool vs selection counts per value of the expression `group` (named by `names` when given; sorted by
        name; beyond MAX_GROUPS the smallest pool groups are summed into '(other)'), with how many of each group
        every stage dropped."""
        import polars as pl

        counts = (self.run.scan().group_by(group.alias("__group"), "__stage")
                  .agg(pl.len().alias("rows"), pl.col("__selected").sum().alias("selected"))
                  .collect(engine=STREAMING))
        labels = {s.index: s.label for s in self.run.stages}
        table: dict[str, list] = {}
        for name, stage, rows, chosen in counts.iter_rows():
            entry = table.setdefault(name if names is None else names[name], [0, 0, {}])
            entry[0] += rows
            entry[1] += chosen
            if stage in labels:
                entry[2][labels[stage]] = entry[2].get(labels[stage], 0) + rows
        out = [GroupRow(g, table[g][0], table[g][1], table[g][2]) for g in sorted(table)]
        if len(out) <= MAX_GROUPS:
            return out
        pool = np.array([r.pool for r in out])
        biggest = set(np.argsort(-pool, kind="stable")[: MAX_GROUPS - 1].tolist())
        rest = [r for i, r in enumerate(out) if i not in biggest]
        dropped: dict[str, int] = {}
        for r in rest:
            for k, v in r.dropped.items():
                dropped[k] = dropped.get(k, 0) + v
        return [r for i, r in enumerate(out) if i in biggest] + [
            GroupRow(f"(other: {len(rest)} groups)", sum(r.pool for r in rest), sum(r.selected for r in rest), dropped)]

    @cached_property
    def groups(self) -> list[GroupRow] | None:
        """Composition by output.summarize_by, when selection.parquet holds that column."""
        import polars as pl

        column = self.run.summarize_by
        if not column or not self.run.is_table_field(column):
            return None
        return self.composition(pl.col(column).cast(pl.String, strict=False).fill_null("(missing)"))

    @cached_property
    def target_groups(self) -> dict[str, list[GroupRow]]:
        """Per multi-target score, composition by the target each example scores highest on (its closest target)."""
        import polars as pl

        run, out = self.run, {}
        for name in sorted(dict.fromkeys(run.score_name(c) for c in run.score_columns)):
            columns = run.columns_of(name)
            if len(columns) < 2 or any(c == f"score.{name}" for c in columns):
                continue
            labels = {i: c.removeprefix(f"score.{name}.") for i, c in enumerate(columns)}
            best = pl.concat_list([run.value(c).fill_null(-np.inf) for c in columns]).list.arg_max()
            out[name] = self.composition(best.cast(pl.Int64), labels)  # labels applied after: replace would not stream
        return out

    # distributions ----------------------------------------------------------------------------
    @cached_property
    def distributed(self) -> list[str]:
        """The columns whose distributions are summarized: every score column, then `tokens` when written."""
        return self.run.score_columns + (["tokens"] if self.run.tokens_column else [])

    @cached_property
    def _moments(self) -> dict[tuple[str, str], dict]:
        """Per (column, pool|selection): values missing, and count, mean, std, min, max of the finite ones."""
        import polars as pl

        exprs = []
        for column in self.distributed:
            v = self.run.value(column)
            for label, where in ((POOL, pl.lit(True)), (SELECTION, pl.col("__selected"))):
                finite = v.filter(where & v.is_finite())
                exprs += [v.filter(where).null_count().alias(f"{column}|{label}|nan"),
                          finite.len().alias(f"{column}|{label}|n"), finite.mean().alias(f"{column}|{label}|mean"),
                          finite.std(ddof=0).alias(f"{column}|{label}|std"),
                          finite.min().alias(f"{column}|{label}|min"), finite.max().alias(f"{column}|{label}|max")]
        found = self.run.aggregate(exprs)
        out: dict[tuple[str, str], dict] = {}
        for name, value in found.items():
            column, label, stat = name.rsplit("|", 2)
            out.setdefault((column, label), {})[stat] = value
        return out

    @cached_property
    def _quantiles(self) -> dict[tuple[str, str], dict[float, float]]:
        """QUANTILES (and the plot range's) of every (column, set), exact, as numpy's default `linear` gives them."""
        wanted, positions = {}, {}
        for key, m in self._moments.items():
            n = m["n"]
            if not n:
                continue
            qs = QUANTILES + (PLOT_QUANTILES if key[1] == POOL else ())
            positions[key] = {q: (n - 1) * q for q in qs}
            ranks = sorted({r for h in positions[key].values() for r in (int(h), min(int(h) + 1, n - 1))})
            wanted[key] = (ranks, n, float(m["min"]), float(m["max"]))
        stats = order_statistics(self.run, wanted)
        out = {}
        for key, places in positions.items():
            out[key] = {q: lerp(stats[key][int(h)], stats[key][min(int(h) + 1, wanted[key][1] - 1)], h - int(h))
                        for q, h in places.items()}
        return out

    def summary(self, column: str, label: str) -> Summary:
        """Count, missing (NaN), mean, std, min, max and QUANTILES of the finite values of a column in a set."""
        m = self._moments[(column, label)]
        count = self.run.size if label == POOL else self.run.counts.selected
        if not m["n"]:
            return Summary(count, m["nan"], None, None, None, None, (None,) * len(QUANTILES))
        q = self._quantiles[(column, label)]
        return Summary(count, m["nan"], m["mean"], m["std"], m["min"], m["max"], tuple(q[p] for p in QUANTILES))

    @cached_property
    def histograms(self) -> dict[str, Histogram]:
        """Pool and selection counts per column in PLOT_BINS bins between the pool's 0.1% and 99.9% quantiles
        (its min and max up to PLOT_EXACT values), values outside clipped to the edges: one pass."""
        spans = {}
        for column in self.distributed:
            m = self._moments[(column, POOL)]
            if not m["n"]:
                continue
            q = self._quantiles[(column, POOL)]
            low, high = (q[PLOT_QUANTILES[0]], q[PLOT_QUANTILES[1]]) if m["n"] > PLOT_EXACT else (m["min"], m["max"])
            if low == high:
                low, high = low - 0.5, high + 0.5
            spans[column] = (float(low), float(high))
        counts = {c: [np.zeros(PLOT_BINS, dtype=np.int64), np.zeros(PLOT_BINS, dtype=np.int64)] for c in spans}
        if spans:
            for shard in self.run.shards([*spans, "__selected"]):
                chosen = shard["__selected"].to_numpy()
                for column, (low, high) in spans.items():
                    x = _floats(shard, column)
                    finite = np.isfinite(x)
                    for k, where in enumerate((finite, finite & chosen)):
                        counts[column][k] += np.histogram(np.clip(x[where], low, high), bins=PLOT_BINS,
                                                          range=(low, high))[0]
        return {c: Histogram(np.linspace(low, high, PLOT_BINS + 1), *counts[c]) for c, (low, high) in spans.items()}

    # correlations -----------------------------------------------------------------------------
    @cached_property
    def correlations(self) -> tuple[list[str], np.ndarray, int]:
        """Spearman correlation between score columns over the pool (pairwise-complete rows), on a keyed sample
        of SAMPLE_ROWS rows when the pool is larger: (columns, matrix, rows used)."""
        columns = self.run.score_columns[:MAX_CORRELATED]
        sample = self._drawn["correlation"]
        return columns, spearman_matrix([_floats(sample, c) for c in columns]), sample.height

    @cached_property
    def _drawn(self) -> dict:
        """Every keyed sample the page needs, in one pass over the table: rows for the correlations, the random
        examples and, with embeddings, the map (selected and not selected rows)."""
        import polars as pl

        run = self.run
        draws = {"correlation": Draw(SAMPLE_ROWS, ("report", "correlation")),
                 "random": Draw(EXAMPLES, ("report", "random"), run.seed)}
        if self._map_rows is not None:
            where, half = self._map_rows[1], MAP_POINTS // 2
            draws["map-selected"] = Draw(half, ("report", "map"), run.seed, where & pl.col("__selected"))
            draws["map-rest"] = Draw(MAP_POINTS, ("report", "map"), run.seed, where & ~pl.col("__selected"))
        return run.draw(draws, list(dict.fromkeys([*run.score_columns[:MAX_CORRELATED], "__selected"])))

    # examples ---------------------------------------------------------------------------------
    @cached_property
    def cut_stage(self) -> tuple[Stage, str] | None:
        """The last stage that dropped rows on a vector score, and that score's column."""
        run = self.run
        for stage in reversed(run.stages):
            columns = run.columns_of(stage.score) if stage.score else []
            if len(columns) == 1 and run.counts.rows.get(stage.index):
                return stage, columns[0]
        return None

    def _just_below(self) -> list[int] | None:
        """Rows the last cutting stage dropped that came closest to being kept (by its score)."""
        import polars as pl

        if self.cut_stage is None:
            return None
        run, (stage, column) = self.run, self.cut_stage
        v = run.value(column)
        dropped = (pl.col("__stage") == stage.index) & v.is_not_null()
        cut: Cut | None = run.cut(stage)
        if cut is not None and cut.low is not None and cut.high is None:
            higher = True
        elif cut is not None and cut.high is not None and cut.low is None:
            higher = False
        else:  # no clean cut: the manifest's orientation, else whether kept rows score higher on average
            recorded = ((run.manifest.get("scores") or {}).get(stage.score) or {}).get("higher_is_better")
            if isinstance(recorded, bool):
                higher = recorded
            else:
                means = run.aggregate([v.filter(run.survivors(stage)).mean().alias("kept"),
                                       v.filter(dropped).mean().alias("dropped")])
                higher = means["kept"] is not None and means["dropped"] is not None and \
                    means["kept"] >= means["dropped"]
        picked = (run.scan().filter(dropped).select("__row", v.alias("__v"))
                  .top_k(EXAMPLES, by=["__v", "__row"], reverse=[not higher, True]).collect(engine=STREAMING))
        if not picked.height:
            return None
        return picked.sort(["__v", "__row"], descending=[higher, False])["__row"].to_list()

    @cached_property
    def examples(self) -> dict[str, list[Example]]:
        """Top and bottom of the selection, the best candidates just below the last cut, and a keyed random draw
        (seeded by the recipe's seed): the few rows shown, fetched by position with their texts."""
        import polars as pl

        run = self.run
        ranked = run.scan().filter(pl.col("__rank") > 0).select("__row", "__rank")
        picks = {"top": ranked.bottom_k(EXAMPLES, by=["__rank", "__row"]).sort(["__rank", "__row"]),
                 "bottom": ranked.top_k(EXAMPLES, by=["__rank", "__row"]).sort(["__rank", "__row"], descending=True)}
        rows = {k: v.collect(engine=STREAMING)["__row"].to_list() for k, v in picks.items()}
        below = self._just_below()
        if below is not None:
            rows["below the cut-off"] = below
        rows["random"] = sorted(self._drawn["random"]["__row"].to_list())
        fetched = run.rows(sorted({r for picked in rows.values() for r in picked}))
        by_row = {r["__row"]: r for r in fetched.iter_rows(named=True)}
        return {kind: [_example(run, by_row[r]) for r in picked] for kind, picked in rows.items()}

    @cached_property
    def texts_shown(self) -> bool:
        return any(e.text is not None for picked in self.examples.values() for e in picked)

    # warnings ---------------------------------------------------------------------------------
    @cached_property
    def warnings(self) -> list[str]:
        """What a reader should look at: NaN or constant scores, ties at a cut, no-op stages, wiped-out groups."""
        run, out = self.run, []
        for column in run.score_columns:
            m = self._moments[(column, POOL)]
            if m["nan"]:
                out.append(f"{column}: {m['nan']:,} of {run.size:,} examples have no score (NaN)")
            if m["n"] > 1 and m["min"] == m["max"]:
                out.append(f"{column}: every example has the same score ({m['min']:.6g}); it cannot rank anything")
        for stage in run.stages:
            cand, kept = run.counts.candidates(stage), run.counts.survivors(stage)
            if cand and kept == cand:
                out.append(f"stage {stage.label}: kept all {cand:,} candidates (it changed nothing)")
            if cand and kept == 0:
                out.append(f"stage {stage.label}: dropped every candidate")
            cut = run.cut(stage)
            if cut is not None and cut.ties:
                out.append(f"stage {stage.label}: {cut.ties:,} dropped candidates tie with the cut-off "
                           f"({cut.describe()}); which of them were kept is a tie-break, not a score difference")
        for row in self.groups or []:
            if row.pool >= 5 and row.selected == 0 and not row.group.startswith("(other"):
                stage = max(row.dropped, key=lambda k: row.dropped[k]) if row.dropped else None
                out.append(f"{run.summarize_by} = {row.group}: none of its {row.pool:,} pool examples were selected"
                           + (f" (most dropped by {stage})" if stage else ""))
        return out

    # the embedding map --------------------------------------------------------------------------
    @cached_property
    def _map_rows(self) -> tuple[dict[int, int] | None, object, int] | None:
        """With embeddings: (table row -> feature row, or None when the features are in table row order;
        the filter of the rows that have features; how many have)."""
        import polars as pl

        if self.embeddings is None:
            return None
        ids, _features = self.embeddings
        if ids is None:  # the run's own file: features in table row order
            return None, pl.lit(True), self.run.size
        found = self.run.find([str(i) for i in ids])
        feature_row: dict[int, int] = {}
        for k, i in enumerate(ids):
            row = found.get(str(i))
            if row is not None:
                feature_row.setdefault(row, k)
        return feature_row, pl.col("__row").is_in(list(feature_row)), len(feature_row)

    @cached_property
    def projection(self) -> Projection | None:
        """PCA to 2-D of a keyed sample of the examples that have features: up to half of MAP_POINTS selected
        examples (so a small selection still shows), the rest not selected."""
        import polars as pl

        if self._map_rows is None or not self._map_rows[2]:
            return None
        feature_row, _where, matched = self._map_rows
        chosen, rest = self._drawn["map-selected"], self._drawn["map-rest"]
        sample = pl.concat([chosen, rest.head(MAP_POINTS - chosen.height)]).sort("__row")
        rows = sample["__row"].to_list()
        at = np.array(rows if feature_row is None else [feature_row[r] for r in rows], dtype=np.int64)
        x = np.asarray(self.embeddings[1][at], dtype=np.float64)  # only the sampled rows are read
        x = x - x.mean(axis=0) if len(x) else x
        if x.shape[1] >= 2 and len(x) >= 2:
            _, _, vt = np.linalg.svd(x, full_matrices=False)
            vt = vt[:2] * np.sign(vt[:2, :1] + (vt[:2, :1] == 0))  # fixed sign: the same picture every build
            xy = x @ vt.T
        else:
            xy = np.column_stack([x[:, 0] if x.shape[1] else np.zeros(len(x)), np.zeros(len(x))])
        return Projection(xy, sample["__selected"].to_numpy().astype(bool), matched)


def _floats(frame, column: str) -> np.ndarray:
    import polars as pl

    return frame[column].cast(pl.Float64, strict=False).fill_null(np.nan).to_numpy().astype(np.float64)


def spearman_matrix(columns: list[np.ndarray]) -> np.ndarray:
    """Spearman correlation between columns (NaN = missing), each pair over the rows where both exist."""
    ranks = [_ranks(c) for c in columns]
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
    return matrix


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks of the non-NaN values (NaN stays NaN)."""
    import polars as pl

    ranks = pl.Series(values).fill_nan(None).rank("average").cast(float).fill_null(np.nan)
    return ranks.to_numpy().astype(np.float64)


def _example(run: Run, row: dict) -> Example:
    scores = {}
    for c in run.score_columns:
        value = row.get(c)
        scores[c] = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")
    return Example(row["__row"], str(row["id"]), bool(row["__selected"]), int(row["__rank"]) or None,
                   row["__label"], scores, row["__text"])
