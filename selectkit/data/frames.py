"""In-memory data (a `datasets.Dataset`, a polars or a pandas DataFrame) as a recipe's data source: the
table is written once to a Parquet file named by the sha256 of its bytes, under the cache's `frames/`
folder, and the recipe's source points at that file. The rest of selectkit then sees an ordinary file:
the source fingerprint is its content, so the cache serves a second run on the same rows and recomputes
when a row changed, and the manifest records where the rows were.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectkit.errors import DataError
from selectkit.storage.cache import share
from selectkit.storage.digest import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl


def as_polars(table: Any, what: str) -> pl.DataFrame:
    """`table` as a polars DataFrame; anything but a Dataset, a polars or a pandas frame is a DataError."""
    import polars as pl

    if isinstance(table, pl.DataFrame):
        return table
    if isinstance(table, pl.LazyFrame):
        return table.collect()
    module = type(table).__module__.split(".")[0]
    if module == "datasets" and hasattr(table, "data") and hasattr(table, "column_names"):
        if getattr(table, "_indices", None) is not None:  # after select/shuffle/filter: the rows it shows
            table = table.flatten_indices(keep_in_memory=True)
        return pl.from_arrow(table.with_format(None).data.table)
    if module == "pandas" and hasattr(table, "columns"):
        return pl.from_pandas(table)
    raise DataError(f"{what}: give a datasets.Dataset, a polars or a pandas DataFrame, not "
                    f"{type(table).__module__}.{type(table).__name__}")


def frame_file(frame: pl.DataFrame, folder: Path) -> Path:
    """`frame` as `folder/<sha256 of its Parquet bytes>.parquet`, written once (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".frame-", suffix=".parquet", dir=folder)
    os.close(fd)
    try:
        frame.write_parquet(tmp, statistics=False)
        path = folder / f"{sha256_file(tmp)}.parquet"
        if path.is_file():
            os.unlink(tmp)
        else:
            share(Path(tmp))
            os.replace(tmp, path)
        return path
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_columns(frame: pl.DataFrame, what: str, key: str, id_column: str | None, text: str | None) -> None:
    """One clear error when an in-memory table lacks the id column (or the text column) its source names."""
    import re

    columns = frame.columns
    shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    if id_column is not None and id_column not in columns:
        raise DataError(f"{what} has no id column {id_column!r} (its columns: {shown})",
                        hint=f"set {key}.id to one of its columns, or leave it out to number the rows",
                        code="data-content")
    fields = re.findall(r"{([^{}]+)}", text) if text and "{" in text else [text] if text else []
    missing = [f for f in fields if f not in columns]
    if missing:
        raise DataError(f"{what} has no column {missing[0]!r} for the text (its columns: {shown})",
                        hint=f"set {key}.text to one of its columns or a '{{column}}' template",
                        code="data-content")
