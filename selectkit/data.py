"""Data sources: read a table of examples (pool or target) into a Dataset with ids and texts."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from selectkit.errors import DataError
from selectkit.lazy import lazy_import

pl = lazy_import("polars")  # polars loads when data is read, not when a recipe is validated


class Reader:
    """A file format. `read` returns every row as a polars DataFrame."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    reads_folders: ClassVar[bool] = False

    def read(self, path: Path) -> pl.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def count_rows(self, path: Path) -> int | None:
        """Row count without reading the data, when the format allows (for validate-time checks)."""
        return None


@dataclass
class Dataset:
    """A source after reading: original rows, ids and the text each example is scored on."""

    name: str
    rows: pl.DataFrame
    ids: pl.Series
    texts: list[str]
    fingerprint: str
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @cached_property
    def token_counts(self) -> np.ndarray:
        """Whitespace-token count per example (what a token budget counts)."""
        return (
            pl.Series(self.texts, dtype=pl.String).str.count_matches(r"\S+").fill_null(0).to_numpy().astype(np.int64)
        )


def template_fields(text: str) -> list[str] | None:
    """The columns a `text` template names, or None when `text` is a plain column name."""
    if "{" not in text:
        return None
    try:
        return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise DataError(f"bad text template {text!r}: {exc}") from exc


def render_texts(frame: pl.DataFrame, text: str, source: str) -> list[str]:
    """Build each example's text from a column name or a `{field}` template."""
    fields = template_fields(text)
    needed = fields if fields is not None else [text]
    missing = [f for f in needed if f not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: column {missing[0]!r} not found (columns: {', '.join(frame.columns) or 'none'})"
        )
    if fields is None:
        return frame[text].cast(pl.String).fill_null("").to_list()
    parts: list[pl.Expr] = []
    for literal, name, _, _ in string.Formatter().parse(text):
        if literal:
            parts.append(pl.lit(literal))
        if name is not None:
            parts.append(pl.col(name).cast(pl.String).fill_null(""))
    return frame.select(pl.concat_str(parts).alias("t"))["t"].to_list()


def fingerprint_path(path: Path) -> str:
    """sha256 over a file's bytes, or over every file of a folder (names and bytes)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def source_fingerprint(path: Path, *, text: str, id_column: str | None, limit: int | None, reader: str) -> str:
    """Identity of a source as read: its bytes plus the settings that shape the examples."""
    settings = f"{text}\x1f{id_column}\x1f{limit}\x1f{reader}"
    return hashlib.sha256((fingerprint_path(path) + settings).encode()).hexdigest()


def pick_reader(path: Path, readers: dict[str, type[Reader]], fmt: str | None, source: str) -> Reader:
    if fmt is not None:
        if fmt not in readers:
            raise DataError(f"{source}: unknown format {fmt!r} (known: {', '.join(sorted(readers))})")
        return readers[fmt]()
    for cls in readers.values():
        if path.is_dir() and cls.reads_folders:
            return cls()
        if not path.is_dir() and any(path.name.endswith(s) for s in cls.suffixes):
            return cls()
    known = sorted({s for c in readers.values() for s in c.suffixes})
    raise DataError(f"{source}: cannot tell the format of {path.name!r} (known suffixes: {', '.join(known)}); "
                    "set `format:`")


def load_dataset(name: str, path: Path, *, text: str, id_column: str | None, limit: int | None,
                 fmt: str | None, readers: dict[str, type[Reader]]) -> Dataset:
    """Read one source. Ids default to the row number; duplicate ids are an error."""
    if not path.exists():
        raise DataError(f"{name}: file not found: {path}")
    reader = pick_reader(path, readers, fmt, name)
    try:
        frame = reader.read(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{name}: cannot read {path} as {reader.name}: {exc}") from exc
    if limit is not None:
        frame = frame.head(limit)
    if frame.height == 0:
        raise DataError(f"{name}: {path} has no rows")
    texts = render_texts(frame, text, name)
    if id_column is None:
        ids = pl.Series("id", np.arange(frame.height, dtype=np.int64))
    else:
        if id_column not in frame.columns:
            raise DataError(f"{name}: id column {id_column!r} not found (columns: {', '.join(frame.columns)})")
        ids = frame[id_column].alias("id")
        if ids.is_duplicated().any():
            dup = ids.filter(ids.is_duplicated()).head(1).to_list()[0]
            raise DataError(f"{name}: id column {id_column!r} has duplicate value {dup!r}")
        if ids.null_count():
            raise DataError(f"{name}: id column {id_column!r} has missing values")
    fingerprint = source_fingerprint(path, text=text, id_column=id_column, limit=limit, reader=reader.name)
    return Dataset(name=name, rows=frame, ids=ids, texts=texts, fingerprint=fingerprint, path=path)
