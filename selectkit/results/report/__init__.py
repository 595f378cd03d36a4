"""report.html: one self-contained, offline, deterministic page about a finished run, built from
its files (manifest.json, selection.parquet, the pool when still there). `write_report` is the API."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPORT_FILE = "report.html"


def build_report(run_dir: str | Path, *, figures: bool | None = True, embeddings: tuple | None = None,
                 shown_as: str | None = None) -> str:
    """The page as text. figures: inline SVG figures (False: tables only; None, which meant "when matplotlib is
    installed", now means True). embeddings: (ids, (N, D) array) for the 2-D map; default: the run's
    `files.embeddings` .npy when listed. shown_as: the run folder's name on the page (the run writes its report
    in a staging folder that is renamed once complete)."""
    from selectkit.results.report.page import build
    from selectkit.results.rundir import Run, readable

    run = Run.open(run_dir, shown_as=shown_as)
    if embeddings is None:
        embeddings = _run_embeddings(run)
    with readable(run_dir):
        return build(run, figures is not False, embeddings)


def write_report(run_dir: str | Path, *, out: str | Path | None = None, figures: bool | None = True,
                 embeddings: tuple | None = None, shown_as: str | None = None) -> Path:
    """Build the page of the run in `run_dir` and write it atomically to `out` (default RUN_DIR/report.html)."""
    text = build_report(run_dir, figures=figures, embeddings=embeddings, shown_as=shown_as)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _run_embeddings(run) -> tuple | None:
    """The run's own embedding file (`files.embeddings`: an (N, D) .npy in selection.parquet row order),
    memory-mapped: only the sampled rows are read."""
    import numpy as np

    name = (run.manifest.get("files") or {}).get("embeddings")
    if not name:
        return None
    if Path(name).name != name:
        run.notes.append(f"embeddings {name!r} is not a file name in the run folder: map not shown")
        return None
    try:
        features = np.load(run.path / name, mmap_mode="r")
    except (OSError, ValueError) as exc:
        run.notes.append(f"embeddings {name} not read: {exc}")
        return None
    if features.ndim != 2 or features.shape[0] != run.size or features.dtype.kind not in "fiu":
        run.notes.append(f"embeddings {name} have shape {features.shape}, not ({run.size:,}, D): map not shown")
        return None
    return None, features


__all__ = ["REPORT_FILE", "build_report", "write_report"]
