"""Writes a run's results: selection.parquet (one row per pool example), the selected subset
in each requested format, and manifest.json (what ran, on what, with which versions)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from selectkit import __version__
from selectkit.components import Shape
from selectkit.execute import RunResult


def selection_table(result: RunResult) -> pl.DataFrame:
    """id, selected, weight, count, rank, dropped_by, and one `score.<name>[.<column>]` per score."""
    n = len(result.pool)
    rank = np.zeros(n, dtype=np.int64)
    rank[result.ranking] = np.arange(1, len(result.ranking) + 1)
    selected = np.zeros(n, dtype=bool)
    selected[result.ranking] = True
    columns = {
        "id": result.pool.ids,
        "selected": pl.Series(selected),
        "weight": pl.Series(np.where(selected, result.weights, 0.0).astype(np.float64)),
        "count": pl.Series(np.where(selected, result.counts, 0).astype(np.int64)),
        "rank": pl.Series(rank).replace(0, None).cast(pl.Int64),
        "dropped_by": pl.Series(result.dropped_by, dtype=pl.String),
    }
    for name, score in result.scores.items():
        if score.shape is Shape.VECTOR:
            columns[f"score.{name}"] = pl.Series(score.values.astype(np.float64))
        elif score.shape is Shape.MATRIX:
            values, names = score.task_matrix("mean")
            for j, column in enumerate(names):
                columns[f"score.{name}.{column}"] = pl.Series(values[:, j].astype(np.float64))
        # feature scores are inputs to selectors, not columns: they stay in the cache
    return pl.DataFrame(columns)


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def subset(result: RunResult) -> pl.DataFrame:
    """The selected rows with their original fields, best first (repeated by count if asked)."""
    rows = result.pool.rows[result.ranking.tolist()]
    if result.plan.recipe.output.repeat_by_count:
        repeats = result.counts[result.ranking]
        rows = rows[np.repeat(np.arange(len(rows)), repeats).tolist()]
    return rows


def plugin_versions(result: RunResult) -> dict[str, str]:
    versions = {}
    for kind in result.plan.checked.registry.components.values():
        for entry in kind.values():
            dist = entry.distribution
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[dist] = "unknown"
    return dict(sorted(versions.items()))


def manifest(result: RunResult, files: dict[str, str]) -> dict:
    plan = result.plan
    loaded = plan.checked.loaded
    stage_counts = [{"stage": r.label, "kept": r.detail.get("kept")} for r in result.reports if r.kind == "select"]
    return {
        "recipe": {"file": str(loaded.file), "name": plan.recipe.name, "hash": loaded.hash,
                   "resolved": loaded.resolved},
        "selectkit_version": __version__,
        "plugin_versions": plugin_versions(result),
        "python": platform.python_version(),
        "data": {name: {"path": str(src.path), "fingerprint": plan.fingerprints[name],
                        "rows": len(result.pool) if name == "pool" else len(result.targets[name])}
                 for name, src in plan.checked.sources.items()},
        "models": {name: spec.model_dump(mode="json") for name, spec in plan.checked.models.items()},
        "cache": str(plan.cache.root),
        "stages": [{"kind": r.kind, "label": r.label, "key": r.key, "status": r.status,
                    "seconds": round(r.seconds, 4)} for r in result.reports],
        "selection": {"pool": len(result.pool), "selected": len(result.ranking), "per_stage": stage_counts},
        "files": files,
    }


def write_outputs(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """Write every output atomically into `out_dir`; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    table = selection_table(result)
    written["selection"] = out_dir / "selection.parquet"
    _atomic(written["selection"], lambda p: table.write_parquet(p, statistics=False))
    rows = subset(result)
    for fmt in result.plan.recipe.output.formats:
        path = out_dir / f"subset.{fmt}"
        if fmt == "parquet":
            _atomic(path, lambda p: rows.write_parquet(p, statistics=False))
        else:
            _atomic(path, lambda p: rows.write_ndjson(p))
        written[f"subset.{fmt}"] = path
    files = {k: v.name for k, v in written.items()}
    written["manifest"] = out_dir / "manifest.json"
    data = manifest(result, files)
    _atomic(written["manifest"], lambda p: p.write_text(json.dumps(data, indent=2, default=str) + "\n"))
    return written
