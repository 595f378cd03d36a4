"""A finished run read back from its folder (manifest.json + selection.parquet), so the report,
`explain` and `diff` build on files alone and degrade gracefully when a manifest field is absent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selectkit.errors import SelectkitError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

# columns of selection.parquet that are not pool fields
RESERVED = frozenset({"id", "selected", "weight", "count", "rank", "dropped_by", "text", "tokens",
                      "duplicate_of", "served_task"})
SUPPORTED_FORMAT = 1  # the newest manifest `format_version` this module knows


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


class Run:
    """One run folder: its manifest, its selection table and, when it can be found, its pool."""

    def __init__(self, path: Path, manifest: dict, table: pl.DataFrame):
        self.path = path
        self.manifest = manifest
        self.table = table
        self.notes: list[str] = []  # what could not be shown, and why

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Read a run folder; a RunDirError says what is missing."""
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
            manifest = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{manifest_path}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise RunDirError(f"{manifest_path}: not a selectkit manifest (a JSON object is expected)")
        name = (manifest.get("files") or {}).get("selection", "selection.parquet")
        selection_path = path / name
        if not selection_path.is_file():
            raise RunDirError(f"{path} is not a finished run: {name} is missing")
        try:
            table = pl.read_parquet(selection_path)
        except Exception as exc:  # polars raises several kinds for a damaged file
            raise RunDirError(f"{selection_path}: cannot read it as Parquet ({exc})") from None
        missing = [c for c in ("id", "selected") if c not in table.columns]
        if missing:
            raise RunDirError(f"{selection_path}: no {missing[0]!r} column; not a selectkit selection table")
        run = cls(path, manifest, table)
        version = manifest.get("format_version")
        if isinstance(version, int) and version > SUPPORTED_FORMAT:
            run.notes.append(f"manifest format {version} is newer than this selectkit knows "
                             f"({SUPPORTED_FORMAT}); some fields may not be shown")
        return run

    # recipe facts ---------------------------------------------------------------------
    @property
    def recipe(self) -> dict:
        return self.manifest.get("recipe") or {}

    @property
    def resolved(self) -> dict:
        return self.recipe.get("resolved") or {}

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.resolved.get("name") or self.path.name)

    @property
    def seed(self) -> int:
        seed = self.resolved.get("seed", self.manifest.get("seed", 0))
        return int(seed) if isinstance(seed, int) else 0

    @property
    def summarize_by(self) -> str | None:
        return (self.resolved.get("output") or {}).get("summarize_by")

    @property
    def size(self) -> int:
        return self.table.height

    @cached_property
    def selected(self) -> np.ndarray:
        return self.table["selected"].fill_null(False).to_numpy().astype(bool)

    @cached_property
    def dropped_by(self) -> np.ndarray:
        """Label of the stage that dropped each row (None where kept)."""
        if "dropped_by" not in self.table.columns:
            return np.full(self.size, None, dtype=object)
        return self.table["dropped_by"].to_numpy().astype(object)

    @cached_property
    def drop_stage(self) -> np.ndarray:
        """Index of the stage that dropped each row: -1 where kept, len(stages) for a label no stage has."""
        import polars as pl

        if "dropped_by" not in self.table.columns:
            return np.full(self.size, -1, dtype=np.int64)
        labels = {s.label: s.index for s in self.stages}
        column = self.table["dropped_by"]
        index = column.replace_strict(labels, default=len(self.stages), return_dtype=pl.Int64)
        return index.fill_null(-1).to_numpy().astype(np.int64)

    @cached_property
    def rank(self) -> np.ndarray:
        """Selection order (1 = best), 0 where not selected."""
        if "rank" not in self.table.columns:
            return np.where(self.selected, np.cumsum(self.selected), 0)
        return self.table["rank"].fill_null(0).to_numpy().astype(np.int64)

    # scores -----------------------------------------------------------------------------
    @cached_property
    def score_columns(self) -> list[str]:
        return [c for c in self.table.columns if c.startswith("score.")]

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
        return raw if raw in self.table.columns else None

    def values(self, column: str) -> np.ndarray:
        """A numeric column as float64 (null -> NaN), converted once."""
        cache = self.__dict__.setdefault("_values", {})
        if column not in cache:
            cache[column] = self.table[column].cast(float).fill_null(np.nan).to_numpy().astype(np.float64)
        return cache[column]

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

    def candidates(self, stage: Stage) -> np.ndarray:
        """Rows that reached `stage` (not dropped by an earlier one)."""
        return (self.drop_stage < 0) | (self.drop_stage >= stage.index)

    def survivors(self, stage: Stage) -> np.ndarray:
        """Rows that came out of `stage` (later stages may still drop them)."""
        return self.candidates(stage) & (self.drop_stage != stage.index)

    def cut(self, stage: Stage) -> Cut | None:
        """The bounds a stage applied to its score: the manifest's `cutoff` diagnostic when recorded,
        otherwise read off the rows when the kept values form an interval no dropped value falls inside."""
        columns = self.columns_of(stage.score) if stage.score else []
        if len(columns) != 1:
            return None
        column = columns[0]
        values = self.values(column)
        cand = self.candidates(stage)
        kept = values[cand & (self.drop_stage != stage.index)]
        dropped = values[self.drop_stage == stage.index]
        kept, dropped = kept[~np.isnan(kept)], dropped[~np.isnan(dropped)]
        recorded = stage.diagnostics.get("cutoff")
        if isinstance(recorded, int | float) and not isinstance(recorded, bool):
            recorded = {"low": recorded}
        if isinstance(recorded, dict) and (recorded.get("low") is not None or recorded.get("high") is not None):
            low, high = recorded.get("low"), recorded.get("high")
            ties = int(sum((dropped == b).sum() for b in (low, high) if b is not None))
            return Cut(column, _num(low), _num(high), "manifest", ties)
        if len(kept) == 0 or len(dropped) == 0:
            return None
        lo, hi = float(kept.min()), float(kept.max())
        if ((dropped > lo) & (dropped < hi)).any():
            return None  # not a cut on this score (sampling, balancing, ...)
        below, above = (dropped <= lo).any(), (dropped >= hi).any()
        if lo == hi:
            below, above = (dropped < lo).any(), (dropped > hi).any()
            if not (below or above):
                return None
        low, high = (lo if below else None), (hi if above else None)
        ties = int(sum((dropped == b).sum() for b in (low, high) if b is not None))
        return Cut(column, low, high, "observed", ties)

    # the pool ---------------------------------------------------------------------------
    @cached_property
    def pool(self) -> tuple[pl.DataFrame, pl.Series] | None:
        """(original pool rows, texts), aligned with the selection table; None (with a note) when the
        pool file is gone or changed since the run."""
        import polars as pl

        try:
            dataset = self._read_pool()
        except SelectkitError as exc:
            self.notes.append(f"pool not read: {exc}")
            return None
        if dataset is None:
            return None
        rows, texts = dataset.rows, pl.Series("text", dataset.texts, dtype=pl.String)
        ids = dataset.ids
        if ids.len() == self.size and ids.cast(pl.String).equals(self.table["id"].cast(pl.String), check_names=False):
            return rows, texts
        order = pl.DataFrame({"id": ids.cast(pl.String), "_row": np.arange(ids.len())})
        joined = self.table.select(pl.col("id").cast(pl.String)).join(order, on="id", how="left", maintain_order="left")
        if joined["_row"].null_count():
            self.notes.append("pool file does not hold every id of the selection; pool fields not shown")
            return None
        index = joined["_row"].to_numpy()
        return rows[index], texts.gather(index)

    def _read_pool(self):
        from selectkit.contract.registry import default_registry
        from selectkit.data.sources import load_dataset

        record = (self.manifest.get("data") or {}).get("pool") or {}
        spec = (self.resolved.get("data") or {}).get("pool") or {}
        places = []
        if record.get("path"):
            places.append(Path(record["path"]))
        if spec.get("path") and self.recipe.get("file"):
            places.append(Path(self.recipe["file"]).parent / spec["path"])
        if not places:
            self.notes.append("the manifest names no pool file: texts and pool fields not shown")
            return None
        # relative paths in today's manifests are relative to where `run` was started: try here, then the run
        # folder and its ancestors (a run folder usually sits inside the project); the fingerprint check below
        # rejects a same-named file that is not the run's pool
        roots = [Path.cwd(), self.path, *list(self.path.resolve().parents)[:4]]
        tried = [p if p.is_absolute() else root / p for p in places for root in roots]
        path = next((p for p in tried if p.is_file() or p.is_dir()), None)
        if path is None:
            self.notes.append(f"pool file {places[0]} not found (from {Path.cwd()}): texts and pool fields not shown")
            return None
        readers = {n: e.cls for n, e in default_registry().components["readers"].items()}
        dataset = load_dataset("pool", path, text=spec.get("text") or "text", id_column=spec.get("id"),
                               limit=spec.get("limit"), fmt=spec.get("format"), readers=readers,
                               on_missing=spec.get("on_missing") or "error")
        expected = record.get("fingerprint")
        if expected and dataset.fingerprint != expected:
            self.notes.append(f"pool file {path} changed since the run (fingerprint differs): "
                              "texts and pool fields not shown")
            return None
        return dataset

    @cached_property
    def texts(self) -> pl.Series | None:
        """Each example's text: the table's `text` column (output.include_text) or the pool file's."""
        if "text" in self.table.columns:
            return self.table["text"].cast(str)
        pool = self.pool
        return pool[1] if pool else None

    def pool_column(self, name: str) -> pl.Series | None:
        """A pool field aligned with the table: from selection.parquet when written there, else the pool file."""
        if name in self.table.columns and name not in RESERVED and not name.startswith(("score.", "raw.", "oracle.")):
            return self.table[name]
        pool = self.pool
        if pool and name in pool[0].columns:
            return pool[0][name]
        return None

    @cached_property
    def tokens(self) -> np.ndarray | None:
        """Whitespace tokens per example (what a token budget counts), when texts or a `tokens` column exist."""
        if "tokens" in self.table.columns:
            return self.table["tokens"].fill_null(0).to_numpy().astype(np.int64)
        texts = self.texts
        if texts is None:
            return None
        return texts.str.count_matches(r"\S+").fill_null(0).to_numpy().astype(np.int64)

    def index_of(self, ids: list[str]) -> dict[str, int | None]:
        """Row of each id (matched as text, so `7` finds an integer id 7)."""
        import polars as pl

        keys = self.table["id"].cast(pl.String).to_list()
        where = {k: i for i, k in enumerate(keys)}
        return {i: where.get(i) for i in ids}


def _num(value) -> float | None:
    return None if value is None else float(value)


def percentile(sorted_values: np.ndarray, value: float) -> float | None:
    """Percent of pool values below `value` (ties count half), over the non-NaN pool values."""
    if np.isnan(value) or len(sorted_values) == 0:
        return None
    below = np.searchsorted(sorted_values, value, side="left")
    upto = np.searchsorted(sorted_values, value, side="right")
    return float(100.0 * (below + 0.5 * (upto - below)) / len(sorted_values))
