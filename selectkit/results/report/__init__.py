"""report.html: one self-contained, offline, deterministic page about a finished run, built from
its files (manifest.json, selection.parquet, the pool when still there). `write_report` is the API."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from selectkit.errors import MissingExtraError

REPORT_FILE = "report.html"


def build_report(run_dir: str | Path, *, figures: bool | None = None, embeddings: tuple | None = None) -> str:
    """The page as text. figures: None = when matplotlib is installed, False = tables only, True = required.
    embeddings: (ids, (N, D) array) for the 2-D map; default: the run's `files.embeddings` .npy when listed."""
    from selectkit.results.report import figures as fig
    from selectkit.results.report.page import build
    from selectkit.results.rundir import Run

    run = Run.open(run_dir)
    if figures is None:
        figures = fig.available()
        if not figures:
            run.notes.append("figures need matplotlib: pip install 'selectkit[report]' (tables are complete)")
    elif figures and not fig.available():
        raise MissingExtraError("matplotlib", "report", "report figures")
    if embeddings is None:
        embeddings = _run_embeddings(run)
    return build(run, figures, embeddings)


def write_report(run_dir: str | Path, *, out: str | Path | None = None, figures: bool | None = None,
                 embeddings: tuple | None = None) -> Path:
    """Build the page of the run in `run_dir` and write it atomically to `out` (default RUN_DIR/report.html)."""
    text = build_report(run_dir, figures=figures, embeddings=embeddings)
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
    """The run's own embedding file (`files.embeddings`: an (N, D) .npy in selection.parquet row order)."""
    import numpy as np

    name = (run.manifest.get("files") or {}).get("embeddings")
    if not name:
        return None
    path = run.path / name
    try:
        features = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        run.notes.append(f"embeddings {name} not read: {exc}")
        return None
    if features.ndim != 2 or features.shape[0] != run.size:
        run.notes.append(f"embeddings {name} have shape {features.shape}, not ({run.size:,}, D): map not shown")
        return None
    return run.table["id"].cast(str).to_list(), features


__all__ = ["REPORT_FILE", "build_report", "write_report"]
