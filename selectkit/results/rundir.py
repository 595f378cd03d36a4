"""A finished run read back from its folder (manifest.json + selection.parquet + the pool file when it
is still there), so report, explain and diff build on files alone and degrade gracefully when a
manifest field is absent or of the wrong type.

Nothing is read whole: the selection table is scanned lazily by polars (aggregates, filters by id
or row) or shard by shard (keyed samples), and the pool file is read only at the rows shown, so
memory stays flat as the pool grows. Derived columns carry a `__` prefix: `__row` (position),
`__selected`, `__stage` (index of the stage that dropped the row, -1 where kept), `__rank`
(0 where not selected) and `__label` (the `dropped_by` text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectkit.errors import SelectkitError
from selectkit.results import manifest as manifest_format

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from selectkit.results.poolfile import PoolFile

# columns of selection.parquet that are not pool fields
RESERVED = frozenset({"id", "selected", "weight", "count", "rank", "dropped_by", "text", "tokens",
                      "duplicate_of", "served_task"})
SHARD_ROWS = 1 << 18  # rows of the selection table read at once where a pass goes shard by shard
STREAMING = "streaming"  # the polars engine of every whole-table query: memory flat in the rows


class RunDirError(SelectkitError):
    """A folder is missing, or is not a finished selectkit run."""


@dataclass(frozen=True)
class Stage:
    """A selector stage as the run's files record it."""

    index: int
    label: str
    use: str
    params: dict[str, Any]
    kept: int | None
    seconds: float | None
    status: str | None
    diagnostics: dict[str, Any]

    @property
    def score(self) -> str | None:
        score = self.params.get("score")
        return score if isinstance(score, str) else None


@dataclass(frozen=True)
class Cut:
    """Where a stage cut one score column: it kept values in [low, high] (None: no bound on that side).
    `source` says whether the manifest recorded it or it was read off the kept and dropped rows."""

    column: str
    low: float | None
    high: float | None
    source: str  # manifest | observed
    ties: int  # candidates the stage dropped whose value equals a bound

    def describe(self) -> str:
        def fmt(v):
            return f"{v:.6g}"
        if self.low is not None and self.high is not None:
            rule = f"{fmt(self.low)} <= {self.column} <= {fmt(self.high)}"
        elif self.low is not None:
            rule = f"{self.column} >= {fmt(self.low)}"
        else:
            rule = f"{self.column} <= {fmt(self.high)}"
        return rule + ("" if self.source == "manifest" else " (observed)")


@dataclass(frozen=True)
class StageCounts:
    """Rows (and whitespace tokens, when the table has a `tokens` column) per dropping stage."""

    rows: dict[int, int]  # __stage -> rows (-1: kept to the end)
    tokens: dict[int, int] | None
    labels: dict[str | None, int]  # dropped_by text -> rows (None: kept)
    selected: int

    def _sum(self, counts: dict[int, int], stage: Stage | None, survivors: bool) -> int:
        if stage is None:
            return sum(counts.values())
        return sum(n for s, n in counts.items() if (s < 0 or s >= stage.index) and not (survivors and s == stage.index))

    def candidates(self, stage: Stage) -> int:
        """Rows that reached `stage` (not dropped by an earlier one)."""
        return self._sum(self.rows, stage, False)

    def survivors(self, stage: Stage) -> int:
        """Rows that came out of `stage` (later stages may still drop them)."""
        return self._sum(self.rows, stage, True)

    def tokens_of(self, stage: Stage | None, survivors: bool = False) -> int | None:
        return None if self.tokens is None else self._sum(self.tokens, stage, survivors)


@dataclass(frozen=True)
class Draw:
    """A keyed sample: the `size` rows (among those `where` keeps) whose draw for (seed, labels, row id)
    is smallest. Keyed by id, it picks the same rows whatever the row order, the shards or the run."""

    size: int
    labels: tuple[str, ...]
    seed: int = 0
    where: Any = None  # a polars expression over the table and its derived columns


class Run:
    """One run folder: its manifest (checked), its selection table (scanned, never loaded) and its pool."""

    def __init__(self, path: Path, manifest: dict, selection: Path, schema: dict, size: int,
                 notes: list[str], shown_as: str | None = None):
        self.path = path
        self.manifest = manifest
        self.selection = selection
        self.schema = schema  # column -> polars dtype
        self.size = size
        self.notes = notes  # what could not be shown, and why
        self.folder = shown_as or path.name  # the name a page gives the run (the final folder, not a staging one)

    @classmethod
    def open(cls, path: str | Path, *, shown_as: str | None = None) -> Run:
        """Read a run folder's manifest and the selection table's schema; a RunDirError says what is missing."""
        import polars as pl

        path = Path(path)
        if not path.exists():
            raise RunDirError(f"run folder not found: {path}")
        if not path.is_dir():
            raise RunDirError(f"not a folder: {path} (give the folder a run wrote)")
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise RunDirError(f"{path} is not a selectkit run: it has no manifest.json",
                              hint="give the folder `selectkit run` wrote")
        try:
            raw = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RunDirError(f"{manifest_path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise RunDirError(f"{manifest_path}: not a selectkit manifest (a JSON object is expected)")
        manifest, notes = manifest_format.check(raw)
        name = (manifest.get("files") or {}).get("selection") or "selection.parquet"
        if Path(name).name != name or name in (".", ".."):
            notes.append(f"manifest.json: files.selection {name!r} is not a file name in the run folder; "
                         "read selection.parquet")
            name = "selection.parquet"
        selection = path / name
        if not selection.is_file():
            raise RunDirError(f"{path} is not a finished run: {name} is missing")
        try:
            scan = pl.scan_parquet(selection)
            schema = dict(scan.collect_schema())
            size = int(scan.select(pl.len()).collect().item())
        except Exception as exc:  # polars raises several kinds for a damaged file
            raise RunDirError(f"{selection}: cannot read it as Parquet ({exc})") from None
        missing = [c for c in ("id", "selected") if c not in schema]
        if missing:
            raise RunDirError(f"{selection}: no {missing[0]!r} column; not a selectkit selection table")
        if not (schema["selected"] == pl.Boolean or schema["selected"].is_integer()):
            raise RunDirError(f"{selection}: column 'selected' holds {schema['selected']}, not true/false")
        if schema["id"].is_nested():
            raise RunDirError(f"{selection}: column 'id' holds {schema['id']}; ids are strings or integers")
        schema = _checked_columns(selection, schema, notes)
        version = manifest.get("format_version")
        if isinstance(version, int) and version > max(manifest_format.KNOWN_FORMATS):
            notes.append(f"manifest format {version} is newer than this selectkit knows "
                         f"({max(manifest_format.KNOWN_FORMATS)}); some fields may not be shown")
        return cls(path, manifest, selection, schema, size, notes, shown_as)

    # recipe facts ---------------------------------------------------------------------
    @property
    def recipe(self) -> dict:
        return self.manifest.get("recipe") or {}

    @property
    def resolved(self) -> dict:
        return self.recipe.get("resolved") or {}

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.resolved.get("name") or self.folder)

    @property
    def seed(self) -> int:
        seed = self.resolved.get("seed", self.manifest.get("seed", 0))
        return int(seed) if isinstance(seed, int) else 0

    @property
    def summarize_by(self) -> str | None:
        return (self.resolved.get("output") or {}).get("summarize_by")

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    # the table ---------------------------------------------------------------------------
    def scan(self) -> pl.LazyFrame:
        """The selection table as a lazy frame with the derived `__` columns (select what you need)."""
        import polars as pl

        frame = pl.scan_parquet(self.selection, row_index_name="__row")
        return frame.with_columns(pl.col("__row").cast(pl.Int64), **self._derived())

    def _derived(self) -> dict[str, pl.Expr]:
        import polars as pl

        selected = pl.col("selected").cast(pl.Boolean, strict=False).fill_null(False)
        if "dropped_by" in self.schema:
            label = pl.col("dropped_by").cast(pl.String, strict=False)
            stage = pl.when(label.is_null()).then(pl.lit(-1, dtype=pl.Int64))
            for text, index in {s.label: s.index for s in self.stages}.items():  # a repeated label: its last stage
                stage = stage.when(label == text).then(pl.lit(index, dtype=pl.Int64))
            # (a when-chain, not replace_strict: polars streams it, where replace materialises the column)
            stage = stage.otherwise(pl.lit(len(self.stages), dtype=pl.Int64))
        else:
            label, stage = pl.lit(None, dtype=pl.String), pl.lit(-1, dtype=pl.Int64)
        if "rank" in self.schema:
            rank = pl.col("rank").cast(pl.Int64, strict=False).fill_null(0)
        else:  # a table without ranks: selection order is row order
            rank = pl.when(selected).then(selected.cast(pl.Int64).cum_sum()).otherwise(0)
        return {"__selected": selected, "__stage": stage, "__rank": rank, "__label": label}

    def value(self, column: str) -> pl.Expr:
        """A numeric column as float64, null where it has no value (null or NaN)."""
        import polars as pl

        return pl.col(column).cast(pl.Float64, strict=False).fill_nan(None)

    def aggregate(self, exprs: Sequence[pl.Expr]) -> dict[str, Any]:
        """One row of aggregates over the whole table (named expressions), computed streaming."""
        if not exprs:
            return {}
        return self.scan().select(exprs).collect(engine=STREAMING).row(0, named=True)

    def shards(self, columns: Sequence[str]) -> Iterator[pl.DataFrame]:
        """The table's `columns` (derived ones included), SHARD_ROWS rows at a time."""
        frame = self.scan().select(list(dict.fromkeys(columns)))
        for lo in range(0, self.size, SHARD_ROWS):
            yield frame.slice(lo, SHARD_ROWS).collect()

    def draw(self, draws: dict[str, Draw], columns: Sequence[str] = ()) -> dict[str, pl.DataFrame]:
        """Keyed samples (name -> Draw) in one pass: per draw, `__row`, `columns` and `__u` (the draw), best first."""
        import numpy as np
        import polars as pl

        from selectkit.contract.keyed_random import row_keys, uniform

        best: dict[str, pl.DataFrame | None] = dict.fromkeys(draws)
        wanted = list(dict.fromkeys(["id", "__row", "__selected", "__stage", *columns]))
        keep = list(dict.fromkeys(["__row", *columns, "__u"]))
        for shard in self.shards(wanted):
            keys = row_keys(shard["id"])
            for name, spec in draws.items():
                here = shard.with_columns(pl.Series("__u", uniform(spec.seed, spec.labels, keys), dtype=pl.Float64))
                if spec.where is not None:
                    here = here.filter(spec.where)
                here = here.bottom_k(spec.size, by=["__u", "__row"])
                best[name] = here if best[name] is None else pl.concat([best[name], here]).bottom_k(
                    spec.size, by=["__u", "__row"])
        out = {}
        for name in draws:
            frame = best[name]
            if frame is None:  # an empty table
                frame = self.scan().select(wanted).head(0).collect().with_columns(
                    pl.Series("__u", np.zeros(0), dtype=pl.Float64))
            out[name] = frame.sort(["__u", "__row"]).select(keep)
        return out

    def find(self, ids: Sequence[str]) -> dict[str, int | None]:
        """Row of each id (matched as text, so `7` finds an integer id 7), read by a lazy filter on the id column."""
        import polars as pl

        ids = [str(i) for i in ids]
        found = (self.scan().select(pl.col("id").cast(pl.String).alias("__id"), "__row")
                 .filter(pl.col("__id").is_in(ids)).collect(engine=STREAMING))
        where: dict[str, int] = {}
        for key, row in found.iter_rows():
            where.setdefault(key, row)
        return {i: where.get(i) for i in ids}

    def rows(self, indices: Sequence[int], fields: Sequence[str] = ()) -> pl.DataFrame:
        """The table's rows at these positions, in the order given, with the derived columns; `__text` (the
        table's `text` column, else the pool file's; null when neither can be read) and, per name in `fields`,
        `field.<name>` (that pool field: from the table when written there, else from the pool file)."""
        import polars as pl

        indices = [int(i) for i in indices]
        frame = self.scan().filter(pl.col("__row").is_in(indices)).collect(engine=STREAMING)
        frame = frame.unique("__row", keep="first", maintain_order=True)
        order = pl.DataFrame({"__row": indices}, schema={"__row": pl.Int64})
        frame = order.join(frame, on="__row", how="left", maintain_order="left")
        from_pool = [f for f in fields if not self.is_table_field(f)]
        pool = None
        if ("text" not in self.schema or from_pool) and indices and frame["id"].null_count() == 0:
            pool = self.pool.rows(indices, from_pool, frame["id"].cast(pl.String).to_list())
        if "text" in self.schema:
            frame = frame.with_columns(pl.col("text").cast(pl.String, strict=False).alias("__text"))
        elif pool is not None:
            frame = frame.with_columns(pool["__text"])
        else:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("__text"))
        for f in fields:
            if self.is_table_field(f):
                column = pl.col(f).cast(pl.String, strict=False)
            elif pool is not None and f in pool.columns:
                column = pl.lit(pool[f].cast(pl.String, strict=False))
            else:
                column = pl.lit(None, dtype=pl.String)
            frame = frame.with_columns(column.alias(f"field.{f}"))
        return frame

    @cached_property
    def pool(self) -> PoolFile:
        """The run's pool file, read at the rows shown only."""
        from selectkit.results.poolfile import PoolFile

        return PoolFile(self)

    def is_table_field(self, name: str) -> bool:
        """Whether a pool field was written into selection.parquet (output.summarize_by is)."""
        return name in self.schema and name not in RESERVED and not name.startswith(("score.", "raw.", "oracle.",
                                                                                      "__", "field."))

    # scores -----------------------------------------------------------------------------
    @cached_property
    def score_columns(self) -> list[str]:
        return [c for c, t in self.schema.items() if c.startswith("score.") and t.is_numeric()]

    def score_name(self, column: str) -> str:
        """The recipe score a `score.<name>[.<target>]` column belongs to."""
        rest = column.removeprefix("score.")
        names = sorted((n for n in self.resolved.get("scores") or {} if rest == n or rest.startswith(n + ".")),
                       key=len, reverse=True)
        return names[0] if names else rest.split(".", 1)[0]

    def columns_of(self, score: str) -> list[str]:
        return [c for c in self.score_columns if self.score_name(c) == score]

    def raw_column(self, column: str) -> str | None:
        """The pre-normalization column (`raw.<name>[.<target>]`) of a score column, when written."""
        raw = "raw." + column.removeprefix("score.")
        return raw if raw in self.schema and self.schema[raw].is_numeric() else None

    @property
    def tokens_column(self) -> bool:
        return "tokens" in self.schema and self.schema["tokens"].is_numeric()

    # stages -----------------------------------------------------------------------------
    @cached_property
    def stages(self) -> list[Stage]:
        specs = self.resolved.get("select") or []
        records = [s for s in self.manifest.get("stages") or [] if s.get("kind") == "select"]
        per_stage = (self.manifest.get("selection") or {}).get("per_stage") or []
        count = max(len(specs), len(records), len(per_stage))
        stages = []
        for i in range(count):
            spec = specs[i] if i < len(specs) else {}
            record = records[i] if i < len(records) else {}
            counts = per_stage[i] if i < len(per_stage) else {}
            label = (record.get("label") or counts.get("stage") or spec.get("name") or spec.get("use")
                     or f"stage {i + 1}")
            diagnostics = counts.get("diagnostics") or record.get("diagnostics") or {}
            stages.append(Stage(i, label, spec.get("use") or label.split("#")[0], spec.get("with") or {},
                                counts.get("kept"), record.get("seconds"), record.get("status"),
                                diagnostics if isinstance(diagnostics, dict) else {"value": diagnostics}))
        return stages

    def stage(self, label: str) -> Stage | None:
        return next((s for s in self.stages if s.label == label), None)

    def candidates(self, stage: Stage) -> pl.Expr:
        """Rows that reached `stage` (not dropped by an earlier one), as a filter expression."""
        import polars as pl

        return (pl.col("__stage") < 0) | (pl.col("__stage") >= stage.index)

    def survivors(self, stage: Stage) -> pl.Expr:
        """Rows that came out of `stage` (later stages may still drop them), as a filter expression."""
        import polars as pl

        return self.candidates(stage) & (pl.col("__stage") != stage.index)

    @cached_property
    def counts(self) -> StageCounts:
        """Rows, tokens and selected rows per dropping stage: one streaming group-by."""
        import polars as pl

        aggs = [pl.len().alias("rows"), pl.col("__selected").sum().alias("selected")]
        if self.tokens_column:
            aggs.append(pl.col("tokens").cast(pl.Int64, strict=False).fill_null(0).sum().alias("tokens"))
        frame = self.scan().group_by("__stage", "__label").agg(aggs).collect(engine=STREAMING)
        rows: dict[int, int] = {}
        tokens: dict[int, int] = {}
        labels: dict[str | None, int] = {}
        for r in frame.iter_rows(named=True):
            rows[r["__stage"]] = rows.get(r["__stage"], 0) + r["rows"]
            labels[r["__label"]] = labels.get(r["__label"], 0) + r["rows"]
            if "tokens" in r:
                tokens[r["__stage"]] = tokens.get(r["__stage"], 0) + int(r["tokens"] or 0)
        return StageCounts(rows, tokens if self.tokens_column else None, labels, int(frame["selected"].sum()))

    @cached_property
    def cuts(self) -> dict[int, Cut | None]:
        """The bounds each stage applied to its score: the manifest's `cutoff` diagnostic when recorded,
        otherwise read off the rows when the kept values form an interval no dropped value falls inside.
        Two streaming passes for every stage at once: extremes, then the values inside or at the bounds."""
        import polars as pl

        out: dict[int, Cut | None] = {s.index: None for s in self.stages}
        scored = {s.index: (s, cols[0]) for s in self.stages
                  if len(cols := (self.columns_of(s.score) if s.score else [])) == 1}
        first = []
        for i, (stage, column) in scored.items():
            v = self.value(column)
            kept, dropped = self.survivors(stage), pl.col("__stage") == i
            first += [v.filter(kept).min().alias(f"{i}.kept_min"), v.filter(kept).max().alias(f"{i}.kept_max"),
                      v.filter(dropped).min().alias(f"{i}.drop_min"), v.filter(dropped).max().alias(f"{i}.drop_max")]
        extremes = self.aggregate(first)
        bounds: dict[int, tuple[float | None, float | None, str]] = {}
        for i, (stage, _column) in scored.items():
            recorded = stage.diagnostics.get("cutoff")
            if _number(recorded):
                recorded = {"low": recorded}
            if isinstance(recorded, dict) and (_number(recorded.get("low")) or _number(recorded.get("high"))):
                low, high = recorded.get("low"), recorded.get("high")
                bounds[i] = (float(low) if _number(low) else None, float(high) if _number(high) else None, "manifest")
                continue
            lo, hi = extremes[f"{i}.kept_min"], extremes[f"{i}.kept_max"]
            dmin, dmax = extremes[f"{i}.drop_min"], extremes[f"{i}.drop_max"]
            if lo is None or dmin is None:
                continue  # nothing kept, or nothing dropped, with a value
            below, above = dmin <= lo, dmax >= hi
            if lo == hi:
                below, above = dmin < lo, dmax > hi
                if not (below or above):
                    continue
            bounds[i] = (lo if below else None, hi if above else None, "observed")
        second = []
        for i, (low, high, source) in bounds.items():
            v, dropped = self.value(scored[i][1]), pl.col("__stage") == i
            ties = [(v == b) & dropped for b in (low, high) if b is not None]
            second.append(pl.sum_horizontal([t.cast(pl.Int64) for t in ties]).sum().alias(f"{i}.ties"))
            if source == "observed":
                lo, hi = extremes[f"{i}.kept_min"], extremes[f"{i}.kept_max"]
                second.append(((v > lo) & (v < hi) & dropped).sum().alias(f"{i}.inside"))
        found = self.aggregate(second)
        for i, (low, high, source) in bounds.items():
            if found.get(f"{i}.inside"):
                continue  # not a cut on this score (sampling, balancing, ...)
            out[i] = Cut(scored[i][1], low, high, source, int(found[f"{i}.ties"] or 0))
        return out

    def cut(self, stage: Stage) -> Cut | None:
        return self.cuts.get(stage.index)

    def percentiles(self, column: str, value: float | None, where: pl.Expr | None = None) -> float | None:
        """Percent of the values (of the rows `where` keeps) below `value`, ties counting half; None without one."""
        return self.percentiles_of([(column, value, where)])[0]

    def percentiles_of(self, asks: Sequence[tuple[str, float | None, pl.Expr | None]]) -> list[float | None]:
        """`percentiles` for several (column, value, where) at once: one streaming pass."""
        import polars as pl

        exprs = []
        for k, (column, value, where) in enumerate(asks):
            if value is None or value != value:
                continue
            v = self.value(column)
            keep = v.is_not_null() if where is None else v.is_not_null() & where
            exprs += [(keep & (v < value)).sum().alias(f"{k}.below"), (keep & (v == value)).sum().alias(f"{k}.same"),
                      keep.cast(pl.Int64).sum().alias(f"{k}.n")]
        found = self.aggregate(exprs)
        out: list[float | None] = []
        for k in range(len(asks)):
            n = found.get(f"{k}.n")
            out.append(float(100.0 * (found[f"{k}.below"] + 0.5 * found[f"{k}.same"]) / n) if n else None)
        return out

# what selection.parquet's own columns must hold (a column of another type is read as absent, with a note)
COLUMN_KINDS = {"dropped_by": "text", "text": "text", "rank": "numeric", "count": "numeric", "tokens": "numeric",
                "weight": "numeric"}


def _checked_columns(selection: Path, schema: dict, notes: list[str]) -> dict:
    """The schema the readers may use: names starting with '__' are refused (the readers' derived columns),
    ids must all be there, and a known column of another type is left out with a note."""
    import polars as pl

    clash = next((c for c in schema if c.startswith("__")), None)
    if clash is not None:
        raise RunDirError(f"{selection}: column {clash!r}: names starting with '__' are reserved for the readers")
    try:
        missing = pl.scan_parquet(selection).select(pl.col("id").null_count()).collect(engine=STREAMING).item()
    except pl.exceptions.PolarsError as exc:
        raise RunDirError(f"{selection}: cannot read its ids ({_first_line(exc)})") from None
    if missing:
        raise RunDirError(f"{selection}: column 'id' has {missing:,} missing values; every row needs an id")
    out = {}
    for name, dtype in schema.items():
        kind = COLUMN_KINDS.get(name)
        ok = kind is None or (dtype.is_numeric() if kind == "numeric" else dtype in (pl.String, pl.Categorical,
                                                                                       pl.Null) or
                              isinstance(dtype, pl.Enum))
        if ok:
            out[name] = dtype
        else:
            notes.append(f"{selection.name}: column {name!r} holds {dtype}, not {kind}; not used")
    return out


@contextmanager
def readable(*folders) -> Iterator[None]:
    """Turn polars' errors on a run's table (a value it cannot compute on, a damaged page) into one RunDirError:
    a file from elsewhere is the user's input, so its faults are messages, not tracebacks."""
    import polars as pl

    try:
        yield
    except pl.exceptions.PolarsError as exc:
        where = " and ".join(str(f) for f in folders)
        raise RunDirError(f"{where}: selection.parquet cannot be read as a selectkit table ({_first_line(exc)})",
                          hint="selectkit --debug shows where") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
