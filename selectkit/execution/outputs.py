"""Writes a run's results as one set: selection.parquet (one row per pool example), the
selected subset in each requested format, and manifest.json (what ran, on what, with which
versions).

The set is written into a temporary sibling folder and swapped in with an atomic exchange
of the two folders, so a reader sees the old set or the new one, never a mix; a failure (a
full disk) leaves the old set as it was. Inputs are sacred: an output folder that is, holds
or lies inside an input is refused before anything runs, and a file selectkit did not write
is never replaced. The subset is assembled shard by shard, so it never needs the pool in memory.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.metadata
import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from selectkit import __version__
from selectkit.contract.components import Shape
from selectkit.contract.lazy import lazy_import
from selectkit.errors import SelectkitError, describe_fault
from selectkit.planning.guard import check_output, file_part, output_patterns, written_by_selectkit
from selectkit.results.manifest import FORMAT_VERSION
from selectkit.storage.cache import jsonable, share

pl = lazy_import("polars")

MANIFEST_VERSION = FORMAT_VERSION  # the readers (selectkit.results) know every format up to this one
LIBRARIES = ("numpy", "polars", "pydantic", "torch", "transformers", "peft", "safetensors", "datasets", "POT",
             "scikit-learn", "faiss-cpu", "ray")
_BUCKET_ROWS = 200_000  # subset rows gathered and sorted at once
_SELECTION_ROWS = 1 << 20  # selection.parquet rows built at once


# ---------------------------------------------------------------- tables


def selection_table(result: Any, lo: int = 0, hi: int | None = None) -> pl.DataFrame:
    """Rows [lo, hi) of selection.parquet: id, selected, weight, count, rank, dropped_by, and one
    `score.<name>[.<column>]` per score."""
    n = len(result.pool)
    hi = n if hi is None else min(hi, n)
    rows = slice(lo, hi)
    ranking = np.asarray(result.ranking, dtype=np.int64)
    here = (ranking >= lo) & (ranking < hi)
    rank = np.zeros(hi - lo, dtype=np.int64)
    rank[ranking[here] - lo] = np.flatnonzero(here) + 1
    selected = rank > 0
    codes = np.asarray(result.dropped_code[rows])
    labels = pl.Series("dropped_by", list(result.dropped_labels) or [""], dtype=pl.String)
    dropped = labels.gather(pl.Series(np.where(codes >= 0, codes, 0).astype(np.uint32)))
    dropped = pl.select(pl.when(pl.lit(pl.Series(codes >= 0))).then(pl.lit(dropped)).otherwise(None)
                        .alias("dropped_by")).to_series()
    columns = {
        "id": result.pool.ids.slice(lo, hi - lo).alias("id"),
        "selected": pl.Series(selected),
        "weight": pl.Series(np.where(selected, result.weights[rows], 0.0).astype(np.float64)),
        "count": pl.Series(np.where(selected, result.counts[rows], 0).astype(np.int64)),
        "rank": pl.Series(rank).replace(0, None).cast(pl.Int64),
        "dropped_by": dropped,
    }
    for name, score in result.scores.items():
        if score.shape is Shape.VECTOR:
            columns[f"score.{name}"] = pl.Series(np.asarray(score.values[rows], dtype=np.float64))
        elif score.shape is Shape.MATRIX:
            values, names = score.task_matrix("mean")
            for j, column in enumerate(names):
                columns[f"score.{name}.{column}"] = pl.Series(np.asarray(values[rows, j], dtype=np.float64))
        # feature scores are inputs to selectors, not columns: they stay in the cache
    for name, (at, values) in getattr(result, "columns", {}).items():
        column = stage_column(n, at, values).slice(lo, hi - lo)
        columns[name if name not in columns else f"selection.{name}"] = column
    for name, mask in getattr(result, "oracle", {}).items():  # a surrogate: which values the oracle computed
        columns[f"oracle.{name}"] = pl.Series(np.asarray(mask[rows], dtype=bool))
    columns["tokens"] = pl.Series(np.asarray(result.pool.token_counts[rows], dtype=np.int64))
    output = result.plan.recipe.output if result.plan.recipe else None
    if output is not None and output.summarize_by and output.summarize_by in result.pool.columns \
            and output.summarize_by not in columns:
        columns[output.summarize_by] = result.pool.table.column(output.summarize_by, lo, hi)
    if output is not None and output.include_text:
        columns["text"] = pl.Series("text", read_texts(result.pool, lo, hi), dtype=pl.String)
    return pl.DataFrame(columns)


def read_texts(pool: Any, lo: int, hi: int) -> list[str]:
    """The rendered texts of pool rows [lo, hi)."""
    from selectkit.data.pool import read_shard

    return read_shard(pool.table, lo, hi).texts


def write_selection(result: Any, path: Path, parts_dir: Path) -> None:
    """selection.parquet, built and written _SELECTION_ROWS rows at a time and joined streaming,
    so the peak memory of the write does not grow with the pool's columns."""
    n = len(result.pool)
    if n <= _SELECTION_ROWS:
        selection_table(result).write_parquet(path, statistics=False)
        return
    parts = []
    for i, lo in enumerate(range(0, n, _SELECTION_ROWS)):
        part = parts_dir / f"selection-{i:05d}.parquet"
        selection_table(result, lo, lo + _SELECTION_ROWS).write_parquet(part, statistics=False)
        parts.append(str(part))
    pl.scan_parquet(parts).sink_parquet(path, statistics=False)
    for part in parts:
        os.unlink(part)


def stage_column(n: int, rows: np.ndarray, values: np.ndarray) -> pl.Series:
    """A selector's column over all n pool rows (null where it gave no value): 1-D values as they
    are, a 2-D integer array as one list per row without its negative (padding) entries."""
    values = np.asarray(values)
    if values.ndim == 2:
        lists: list = [None] * n
        for r, row in zip(np.asarray(rows).tolist(), values.tolist()):
            lists[r] = [int(v) for v in row if v >= 0]
        return pl.Series(lists, dtype=pl.List(pl.Int64))
    full = pl.Series(values[:0]).extend_constant(None, n)
    return full.scatter(np.asarray(rows, dtype=np.int64), pl.Series(values)) if len(rows) else full


def subset_parts(result: Any, folder: Path) -> list[Path]:
    """The selected rows with their original fields, best first (repeated by count if asked),
    as parquet parts in order: each pool shard is read once, rows go to buckets of ranks."""
    ranking = np.asarray(result.ranking, dtype=np.int64)
    repeat = bool(result.plan.recipe.output.repeat_by_count) if result.plan.recipe else False
    pool = result.pool
    ranges = pool.shard_ranges
    starts = np.array([lo for lo, _ in ranges] + [len(pool)], dtype=np.int64)
    buckets = max(1, -(-len(ranking) // _BUCKET_ROWS))
    order = np.arange(len(ranking))
    shard_of = np.searchsorted(starts, ranking, side="right") - 1
    written: dict[int, list[Path]] = {}
    for i, (lo, hi) in enumerate(ranges):
        here = np.flatnonzero(shard_of == i)
        if not len(here):
            continue
        frame = pool.table.slice(lo, hi)
        rows = frame[(ranking[here] - lo).tolist()].with_columns(pl.Series("__rank", order[here]))
        for b in np.unique(order[here] // _BUCKET_ROWS).tolist():
            part = rows.filter((pl.col("__rank") // _BUCKET_ROWS) == b)
            path = folder / f"bucket-{b:05d}-shard-{i:05d}.parquet"
            part.write_parquet(path, statistics=False)
            written.setdefault(b, []).append(path)
    parts = []
    stage = {name: stage_column(len(pool), rows, values) for name, (rows, values) in getattr(result, "columns",
                                                                                            {}).items()}
    counts = np.asarray(result.counts)
    for b in range(buckets):
        files = written.get(b, [])
        if not files:
            continue
        frames = [pl.read_parquet(f) for f in files]
        frame = (pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]).sort("__rank")
        for name, column in stage.items():
            frame = frame.with_columns(column.gather(ranking[frame["__rank"].to_numpy()]).alias(
                name if name not in frame.columns else f"selection.{name}"))
        if repeat:
            reps = counts[ranking[frame["__rank"].to_numpy()]]
            frame = frame[np.repeat(np.arange(frame.height), reps).tolist()]
        path = folder / f"part-{b:05d}.parquet"
        frame.drop("__rank").write_parquet(path, statistics=False)
        parts.append(path)
        for f in files:
            f.unlink()
    return parts


def subset(result: Any) -> pl.DataFrame:
    """The whole subset in memory (small runs, the Python API)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        parts = subset_parts(result, Path(tmp))
        return pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed") if parts else \
            result.pool.table.slice(0, 0)


# ---------------------------------------------------------------- manifest


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def plugin_versions(result: Any) -> dict[str, str]:
    versions = {}
    for kind in result.plan.registry.components.values():
        for entry in kind.values():
            versions[entry.distribution] = _version(entry.distribution) or "unknown"
    return dict(sorted(versions.items()))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that compute, read from package metadata (nothing is imported)."""
    return {name: v for name in LIBRARIES if (v := _version(name)) is not None}


def manifest(result: Any, files: dict[str, str]) -> dict:
    plan = result.plan
    loaded = plan.checked.loaded if plan.checked is not None else None
    reads = {s.payload.source.name: s for s in plan.of_kind("read")}
    per_stage = [{"stage": r.label, "kept": r.detail.get("kept"), "diagnostics": r.detail.get("diagnostics", {})}
                 for r in result.reports if r.kind == "select"]
    models = {}
    for step in plan.of_kind("pass"):
        ref = step.payload.work.model
        models[ref.name] = {**ref.spec.model_dump(mode="json"), "fingerprint": ref.fingerprint}
    scores = {}
    for step in plan.of_kind("score"):
        node = step.payload.node
        score = result.scores.get(node.name)
        scores[node.name] = {"scorer": node.scorer.name, "shape": node.shape.value,
                             "higher_is_better": bool(score.higher_is_better) if score is not None else None,
                             "columns": list(score.columns) if score is not None else [],
                             "normalize": [n.name for n in node.normalizers]}
        if node.surrogate is not None:
            scores[node.name]["surrogate"] = node.surrogate.model_dump(mode="json")
        if node.name in getattr(result, "influence", {}):  # what `explain --influence` opens
            scores[node.name]["influence"] = result.influence[node.name]
        if node.lazy:  # computed only at the rows its readers asked (see its stage entry for how many)
            scores[node.name]["lazy"] = True
    return {
        "format_version": MANIFEST_VERSION,
        "written_by": "selectkit",
        "limit": plan.options.get("limit"),
        "recipe": {"file": str(loaded.file) if loaded else None, "name": plan.name,
                   "hash": loaded.hash if loaded else None, "resolved": loaded.resolved if loaded else None},
        "options": {k: v for k, v in sorted(plan.options.items()) if k not in ("device",)},
        "selectkit_version": __version__,
        "plugin_versions": plugin_versions(result),
        "versions": {"selectkit": __version__, **library_versions()},
        "python": platform.python_version(),
        "data": {name: {"path": ", ".join(str(f) for f in step.payload.source.files),
                        "fingerprint": plan.fingerprints[name],
                        "rows": len(result.pool) if name == "pool" else len(result.targets[name])}
                 for name, step in reads.items()},
        "models": models,
        "scores": scores,
        **({"surrogates": result.surrogates} if getattr(result, "surrogates", None) else {}),
        "cache": plan.cache.location,
        "stages": [{"kind": r.kind, "label": r.label, "step": r.step, "key": r.key, "status": r.status,
                    "seconds": round(r.seconds, 4), **({"detail": r.detail} if r.detail else {})}
                   for r in result.reports],
        "selection": {"pool": len(result.pool), "selected": len(result.ranking), "per_stage": per_stage},
        "warnings": list(result.warnings),
        "files": files,
    }


# ---------------------------------------------------------------- the set, atomically


def write_outputs(result: Any, out_dir: Path) -> dict[str, Path]:
    """Write every output into a staging folder, then swap it in for `out_dir`; returns name -> path.
    An `out_dir` in object storage gets a new set each run (`write_to_store`)."""
    if not isinstance(out_dir, str | Path):
        return write_to_store(result, out_dir)
    out_dir = Path(os.path.abspath(out_dir))
    recipe = result.plan.recipe
    check_output(out_dir, result.plan.inputs() if hasattr(result.plan, "inputs") else {},
                 output_patterns(recipe.output if recipe else None))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    share(staging, folder=True)
    try:
        names = _write_set(result, staging, out_dir.name)
        _swap_in(staging, out_dir)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)

        reason = describe_fault(exc, [str(out_dir.parent)])
        if reason is None:
            raise
        kept = "; the previous outputs there are intact" if out_dir.exists() else ""
        raise SelectkitError(f"could not write the outputs to {out_dir}: {reason}{kept}") from None
    return {k: out_dir / v for k, v in names.items()}


CURRENT = "current.json"


def write_to_store(result: Any, out_dir: Any) -> dict[str, Any]:
    """Outputs at a URL (an ObjectPath): the set is written locally, uploaded under a prefix of its own
    (`set-<UTC time>-<id>/`), and committed by writing `current.json` (the pointer to it) last. A
    reader follows the pointer, so it sees the previous set or the new one, never half of one;
    earlier sets stay where they are until removed by hand."""
    import tempfile

    check_output(out_dir, result.plan.inputs() if hasattr(result.plan, "inputs") else {})
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    set_name = f"set-{stamp}-{uuid.uuid4().hex[:8]}"
    local = Path(tempfile.mkdtemp(prefix=".selectkit-outputs-"))
    try:
        names = _write_set(result, local, out_dir.name)
        uploaded = {}
        for path in sorted(p for p in local.rglob("*") if p.is_file() and ".parts" not in p.parts):
            rel = path.relative_to(local).as_posix()
            (out_dir / set_name / rel).upload(path)
            uploaded[rel] = path.stat().st_size
        pointer = {"written_by": "selectkit", "set": set_name, "files": uploaded, "names": names,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (out_dir / CURRENT).write_text(json.dumps(pointer, indent=1, sort_keys=True))
    except SelectkitError as exc:
        raise SelectkitError(f"could not write the outputs to {out_dir}: {exc.message}; the previous set there "
                             "(current.json) is intact", hint=exc.hint) from None
    except BaseException as exc:
        reason = describe_fault(exc, [str(local)])
        if reason is None:
            raise
        raise SelectkitError(f"could not write the outputs to {out_dir}: {reason}; the previous set there "
                             "(current.json) is intact") from None
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return {k: out_dir / set_name / v for k, v in names.items()}


def current_set(out_dir: Any) -> Any:
    """The committed output set at a URL (what `current.json` points to), or None."""
    try:
        pointer = json.loads((out_dir / CURRENT).read_bytes())
    except (SelectkitError, ValueError):
        return None
    return out_dir / pointer["set"]


def _write_set(result: Any, folder: Path, name: str) -> dict[str, str]:
    """Every output into `folder` (a staging folder that becomes the run folder `name`)."""
    names: dict[str, str] = {"selection": "selection.parquet"}
    parts_dir = folder / ".parts"
    parts_dir.mkdir()
    write_selection(result, folder / "selection.parquet", parts_dir)
    formats = result.plan.recipe.output.formats if result.plan.recipe else ["parquet"]
    parts = subset_parts(result, parts_dir)
    for fmt in formats:
        path = folder / f"subset.{fmt}"
        if fmt == "hf_dataset":
            save_hf_dataset(parts, result.pool.table.slice(0, 0), path, parts_dir)
        elif parts:
            lazy = pl.scan_parquet([str(p) for p in parts])
            (lazy.sink_parquet(path, statistics=False) if fmt == "parquet" else lazy.sink_ndjson(path))
        else:
            empty = result.pool.table.slice(0, 0)
            (empty.write_parquet(path, statistics=False) if fmt == "parquet" else empty.write_ndjson(path))
        names[f"subset.{fmt}"] = path.name
    split = result.plan.recipe.output.split_by if result.plan.recipe else None
    if split is not None:
        names.update(split_subset(result, folder, split, formats, parts))
    shutil.rmtree(parts_dir)
    report = bool(result.plan.recipe.output.report) if result.plan.recipe else False
    if report:
        names["report"] = "report.html"
    data = manifest(result, dict(names))
    (folder / "manifest.json").write_text(json.dumps(data, indent=2, default=jsonable) + "\n")
    if report and not _report(folder, result, name):
        del names["report"]
        data = manifest(result, dict(names))
        (folder / "manifest.json").write_text(json.dumps(data, indent=2, default=jsonable) + "\n")
    for path in folder.iterdir():
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            share(file, folder=file.is_dir())
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if path.is_dir():
            share(path, folder=True)
    names["manifest"] = "manifest.json"
    return names


def save_hf_dataset(parts: list[Path], frame: pl.DataFrame, path: Path, scratch: Path) -> None:
    """The subset's parquet parts (or, with none, `frame`) as a `datasets.Dataset.save_to_disk` folder at
    `path`. The parts are memory-mapped through an Arrow cache under `scratch` (deleted with it), so the
    subset need not fit in memory; no progress bars are drawn."""
    from selectkit.errors import require

    datasets = require("datasets", "models", "output.formats: hf_dataset")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        if parts:
            data = datasets.Dataset.from_parquet([str(p) for p in parts], cache_dir=str(scratch / "hf-cache"),
                                                 keep_in_memory=False)
        else:
            data = datasets.Dataset(datasets.table.InMemoryTable(frame.to_arrow()))
        data.save_to_disk(str(path))
    finally:
        if bars:
            datasets.enable_progress_bars()


def split_subset(result: Any, folder: Path, column: str, formats: list[str],
                 parts: list[Path] | None = None) -> dict[str, str]:
    """One subset file per value of a selector's column (a list column: per value it holds), e.g.
    rs2's `round`: subset.round-1.jsonl, subset.round-2.jsonl, ... in the subset's order; or of a
    pool column. A value that is not a plain file-name part is percent-escaped (never a path)."""
    staged = getattr(result, "columns", {})
    if column not in staged and column not in result.pool.columns:
        raise SelectkitError(f"output.split_by: no stage wrote a column {column!r} and the pool has none "
                             f"(stage columns: {', '.join(staged) or 'none'})")
    name = column if column not in staged or column not in result.pool.columns else f"selection.{column}"
    if parts is not None:
        whole = pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed") if parts else \
            result.pool.table.slice(0, 0)
    else:
        whole = pl.read_parquet(folder / "subset.parquet") if "parquet" in formats else pl.read_ndjson(
            folder / "subset.jsonl")
    listed = whole.schema[name] == pl.List(pl.Int64)
    values = np.unique(np.concatenate([np.asarray(v) for v in whole[name].drop_nulls().to_list()]) if listed
                       else whole[name].drop_nulls().to_numpy())
    written = {}
    for value in values.tolist():
        part = whole.filter(pl.col(name).list.contains(value) if listed else pl.col(name) == value)
        for fmt in formats:
            file = f"subset.{column}-{file_part(value)}.{fmt}"
            if fmt == "hf_dataset":
                save_hf_dataset([], part, folder / file, folder)
            else:
                (part.write_parquet(folder / file, statistics=False) if fmt == "parquet" else part.write_ndjson(
                    folder / file))
            written[file] = file
    return written


def _report(folder: Path, result: Any, name: str) -> bool:
    """report.html from the files just written (in the staging folder; the page names the run folder `name`);
    a report that fails is a warning, never a failed run."""
    from selectkit.results.report import write_report

    try:
        write_report(folder, shown_as=name)
    except (SelectkitError, ImportError, ValueError) as exc:
        result.warnings.append(f"report.html was not written: {exc}")
        return False
    return True


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `staging`; files in `out_dir` that selectkit did not write move along."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    ours = written_by_selectkit(out_dir)
    moved = []
    for entry in sorted(out_dir.iterdir()):
        if entry.name not in ours and not (staging / entry.name).exists():
            os.rename(entry, staging / entry.name)
            moved.append(entry.name)
    try:
        if _exchange(staging, out_dir):
            shutil.rmtree(staging, ignore_errors=True)  # now the old set
            return
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, old)
        os.rename(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError:
        for name in moved:
            os.rename(staging / name, out_dir / name)
        raise
