"""A finished run's subset into a training loop: `load_selection` gives the selected examples (their pool
fields, best first) with the run's `weight`, `count`, `rank` and `score.*` columns, as a `datasets.Dataset`
or a polars DataFrame; `as_sampler` turns those weights into a seeded torch `WeightedRandomSampler`.

A run folder is hostile input: it is opened through `Run.open` (manifest and selection table checked),
the subset file is read by its fixed name inside the folder, and a subset that does not line up with the
selection table (rows, ids) is an error, never a silent misalignment. `datasets` and `torch` are imported
inside the functions, so `import selectkit` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectkit.errors import SelectkitError
from selectkit.results.rundir import Run, RunDirError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

SUBSET_FILES = ("subset.parquet", "subset.jsonl", "subset.hf_dataset")  # in the order they are preferred
RUN_COLUMNS = ("weight", "count", "rank")  # per selected example, from selection.parquet (with score.*)
AS = ("datasets", "polars")


def load_selection(run_dir: Any, as_: str = "datasets") -> Any:
    """The subset of the run in `run_dir` (a folder, or what `selectkit.run` returned), one row per
    selected example, best first: its pool fields plus `weight`, `count`, `rank` and every `score.*`
    column (a pool field of the same name is kept as `pool.<name>`). `as_`: "datasets" or "polars"."""
    if as_ not in AS:
        raise SelectkitError(f"load_selection: as_={as_!r} is not one of {', '.join(AS)}")
    frame = _selection_frame(_folder(run_dir))
    if as_ == "polars":
        return frame
    from selectkit.errors import require

    datasets = require("datasets", "models", "load_selection(as_='datasets')")
    return datasets.Dataset(datasets.table.InMemoryTable(frame.to_arrow()))


def load_selection_polars(run_dir: Any) -> pl.DataFrame:
    """`load_selection(run_dir, as_="polars")`."""
    return load_selection(run_dir, as_="polars")


def _folder(run_dir: Any) -> Path:
    folder = getattr(run_dir, "run_dir", run_dir)  # a RunOutput
    if not isinstance(folder, (str, Path)):
        raise SelectkitError(f"load_selection: give a run folder (a path), not {type(run_dir).__name__}")
    return Path(folder)


def _selection_frame(folder: Path) -> pl.DataFrame:
    import polars as pl

    run = Run.open(folder)
    keep = ["id", *[c for c in RUN_COLUMNS if c in run.schema], *[c for c in run.columns if c.startswith("score.")]]
    try:
        chosen = (run.scan().filter(pl.col("__selected")).sort("__rank")
                  .select([pl.col(c) for c in keep]).collect())
    except Exception as exc:  # a damaged table: polars raises several kinds
        raise RunDirError(f"{run.selection}: cannot read the selected rows ({exc})") from None
    subset, name = _read_subset(folder)
    resolved = run.resolved
    output = resolved.get("output") if isinstance(resolved.get("output"), dict) else {}
    if output.get("repeat_by_count") and "count" in chosen.columns and subset.height != chosen.height:
        counts = chosen["count"].fill_null(1).clip(lower_bound=1)
        starts = (counts.cum_sum() - counts).to_list()
        if int(counts.sum()) != subset.height:
            raise RunDirError(_mismatch(folder, name, subset.height, int(counts.sum())))
        subset = subset[starts]
    if subset.height != chosen.height:
        raise RunDirError(_mismatch(folder, name, subset.height, chosen.height))
    data = resolved.get("data") if isinstance(resolved.get("data"), dict) else {}
    pool = data.get("pool") if isinstance(data.get("pool"), dict) else {}
    id_field = pool.get("id")
    if isinstance(id_field, str) and id_field in subset.columns:
        same = subset[id_field].cast(pl.String, strict=False) == chosen["id"].cast(pl.String, strict=False)
        if not bool(same.fill_null(False).all()):
            raise RunDirError(f"{folder / name}: its ids do not match the selected rows of {run.selection.name} "
                              "(a damaged or edited run folder)", hint="run the recipe again")
        chosen = chosen.drop("id")
    elif "id" in subset.columns:
        chosen = chosen.rename({"id": "selection.id"})
    subset = subset.rename({c: f"pool.{c}" for c in subset.columns if c in chosen.columns})
    return pl.concat([subset, chosen], how="horizontal")


def _mismatch(folder: Path, name: str, got: int, want: int) -> str:
    return (f"{folder / name} holds {got:,} rows where selection.parquet selects {want:,} "
            "(a damaged or edited run folder)")


def _read_subset(folder: Path) -> tuple[pl.DataFrame, str]:
    import polars as pl

    for name in SUBSET_FILES:
        path = folder / name
        if not path.exists():
            continue
        try:
            if name.endswith(".parquet"):
                return pl.read_parquet(path), name
            if name.endswith(".jsonl"):
                return (pl.read_ndjson(path) if path.stat().st_size else pl.DataFrame()), name
            from selectkit.errors import require

            datasets = require("datasets", "models", "load_selection")
            return pl.from_arrow(datasets.load_from_disk(str(path)).data.table), name
        except SelectkitError:
            raise
        except Exception as exc:  # a damaged or foreign file
            raise RunDirError(f"{path}: cannot read the subset ({type(exc).__name__}: {exc})") from None
    raise RunDirError(f"{folder} holds no subset file ({', '.join(SUBSET_FILES)})",
                      hint="add parquet, jsonl or hf_dataset to output.formats and run again")


def as_sampler(selection: Any, *, seed: int, num_samples: int | None = None, replacement: bool = True) -> Any:
    """A torch `WeightedRandomSampler` over the rows of `selection` (what `load_selection` returned, as a
    Dataset or a polars frame, or a run folder), drawing row i with probability ∝ weight_i × count_i:
    DSIR or sensitivity weights, importance-resampling counts, `repeat_by_count` without repeating rows.
    Seeded: the same seed gives the same draws. `num_samples` defaults to the rows' total count."""
    import numpy as np

    weights, counts = _weights(selection)
    p = weights * counts
    if not len(p):
        raise SelectkitError("as_sampler: the selection is empty")
    if not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
        raise SelectkitError("as_sampler: the weights must be finite, non-negative and not all zero")
    from selectkit.errors import require

    torch = require("torch", "models", "as_sampler")
    generator = torch.Generator().manual_seed(int(seed))
    n = int(num_samples) if num_samples is not None else int(counts.sum())
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(p, dtype=torch.float64), n,
                                                  replacement=replacement, generator=generator)


def _weights(selection: Any):
    import numpy as np

    if isinstance(selection, (str, Path)) or hasattr(selection, "run_dir"):
        selection = load_selection(selection, as_="polars")
    columns = list(getattr(selection, "column_names", None) or getattr(selection, "columns", []))
    if "weight" not in columns:
        raise SelectkitError("as_sampler: the selection has no 'weight' column (give what load_selection returned)")

    def column(name: str):
        values = selection[name]
        values = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
        return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)

    counts = column("count") if "count" in columns else np.ones(len(selection))
    return column("weight"), np.where(counts > 0, counts, 1.0)
