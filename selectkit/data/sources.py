"""Data sources: files of examples, read by row range, and the text each example is scored on.

A `Reader` knows one format; `Reader.open(path)` gives a `RowSource` that reads any row
range of the file (jsonl by a line index, parquet by row groups, small formats from memory),
so a pool never has to fit in memory. `render_texts` builds each example's text from a column
or a `{template}` and names every data problem by file and line (a null field, a list where
text belongs). Targets are small and read whole into a `Dataset`; the pool is a `Pool`
(selectkit.data.pool) that materialises one shard at a time.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from selectkit.contract.lazy import lazy_import
from selectkit.contract.readers import FirstRows, Reader, RowSource
from selectkit.errors import DataError, SelectkitWarning
from selectkit.storage.digest import path_fingerprint

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

pl = lazy_import("polars")  # polars loads when data is read, not when a recipe is validated

ON_MISSING = ("error", "skip", "empty")


@dataclass
class Dataset:
    """Rows in memory (a target, or one shard of the pool): original fields, ids and texts.
    `usable[i]` is False for a row whose text is missing and skipped (`on_missing: skip`)."""

    name: str
    rows: pl.DataFrame
    ids: pl.Series
    texts: list[str]
    fingerprint: str
    path: Path | None = None
    meta: dict = field(default_factory=dict)
    usable: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @cached_property
    def token_counts(self) -> np.ndarray:
        """Whitespace-token count per example (what a token budget counts)."""
        return count_tokens(self.texts)

    @property
    def columns(self) -> list[str]:
        return list(self.rows.columns)

    def column(self, name: str) -> pl.Series:
        return self.rows[name]

    def slice(self, lo: int, hi: int) -> Dataset:
        """Rows [lo, hi) (`meta.first_row` says where they start)."""
        hi = min(hi, len(self))
        return Dataset(name=self.name, rows=self.rows.slice(lo, hi - lo), ids=self.ids.slice(lo, hi - lo),
                       texts=self.texts[lo:hi], fingerprint=self.fingerprint, path=self.path,
                       usable=None if self.usable is None else self.usable[lo:hi], meta={"first_row": lo})


def count_tokens(texts: list[str]) -> np.ndarray:
    return pl.Series(texts, dtype=pl.String).str.count_matches(r"\S+").fill_null(0).to_numpy().astype(np.int64)


# ---------------------------------------------------------------- texts


def template_fields(text: str) -> list[str] | None:
    """The columns a `text` template names, or None when `text` is a plain column name."""
    if "{" not in text:
        return None
    try:
        return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise DataError(f"bad text template {text!r}: {exc}") from exc


def text_columns(text: str) -> list[str]:
    fields = template_fields(text)
    return fields if fields is not None else [text]


def check_columns(columns: list[str], text: str, source: str) -> None:
    missing = [f for f in text_columns(text) if f not in columns]
    if missing:
        raise DataError(f"{source}: column {missing[0]!r} not found (columns: {', '.join(columns) or 'none'})")


@dataclass
class Rendered:
    texts: list[str]
    skipped: pl.Series | list[bool] | None  # True where the text was missing and the row is skipped (skip)
    missing: int = 0  # rows with a missing field (skipped or emptied)

    @property
    def usable(self) -> np.ndarray:
        """False where the row is skipped (numpy only when asked: validate's look at a file needs none)."""
        return np.ones(len(self.texts), dtype=bool) if self.skipped is None else ~self.skipped.to_numpy()


def render_texts(frame: pl.DataFrame, text: str, source: str, *, on_missing: str = "error",
                 where=None, first_row: int = 0, known_columns: list[str] | None = None) -> Rendered:
    """Each example's text from a column name or a `{field}` template.

    A field absent from the whole source is an error. A field that is null or absent in some rows
    is an error naming the first such row (`where(row)` gives `pool.jsonl:61`), unless
    `on_missing` is `skip` (the row stays in the table but is never selected) or `empty` (""). A
    field holding lists or structs is an error: its printed form is not text.
    """
    if isinstance(frame, FirstRows):
        return _render_first_rows(frame, text, source, on_missing)
    where = where or (lambda row: f"{source} row {row + 1}")
    needed = text_columns(text)
    check_columns(known_columns if known_columns is not None else frame.columns, text, source)
    for name in needed:
        if name in frame.columns:
            dtype = frame.schema[name]
            if dtype.is_nested() or dtype == pl.Binary or dtype == pl.Object:
                raise DataError(not_text_message(where(first_row), name, str(dtype)))
    filled = frame.with_columns([pl.lit(None, dtype=pl.String).alias(n) for n in needed if n not in frame.columns])
    nulls = filled.select(pl.any_horizontal([pl.col(n).is_null() for n in needed]).alias("m"))["m"]
    missing = int(nulls.sum())
    if missing and on_missing == "error":
        row = int(nulls.arg_max())
        name = next(n for n in needed if filled[n][row] is None)
        raise _missing_field(where(first_row + row), name, source)
    fields = template_fields(text)
    if fields is None:
        texts = filled[text].cast(pl.String).fill_null("").to_list()
    else:
        parts: list[pl.Expr] = []
        for literal, name, _, _ in string.Formatter().parse(text):
            if literal:
                parts.append(pl.lit(literal))
            if name is not None:
                parts.append(pl.col(name).cast(pl.String).fill_null(""))
        texts = filled.select(pl.concat_str(parts).alias("t"))["t"].to_list()
    return Rendered(texts, nulls if missing and on_missing == "skip" else None, missing)


def _render_first_rows(head: FirstRows, text: str, source: str, on_missing: str) -> Rendered:
    """`render_texts` on validate's first rows, in plain Python (no polars): the same checks and
    messages, each naming the row's own line; values print as polars casts them to text."""
    needed = text_columns(text)
    check_columns(head.columns, text, source)
    fields = template_fields(text)
    texts, skipped = [], []
    for i, row in enumerate(head.rows):
        for name in needed:
            if isinstance(value := row.get(name), dict | list):
                raise DataError(not_text_message(head.where(i), name, head.kind(name, value)))
        absent = [n for n in needed if row.get(n) is None]
        if absent and on_missing == "error":
            raise _missing_field(head.where(i), absent[0], source)
        skipped.append(bool(absent))
        values = {n: _as_text(row.get(n)) for n in needed}
        texts.append(values[text] if fields is None else
                     "".join(lit + (values[n] if n is not None else "")
                             for lit, n, _, _ in string.Formatter().parse(text)))
    missing = sum(skipped)
    return Rendered(texts, skipped if missing and on_missing == "skip" else None, missing)


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _missing_field(where: str, name: str, source: str) -> DataError:
    return DataError(f"{where}: field {name!r} is missing or null",
                     hint=f"set `on_missing: skip` (never select such rows) or `empty` on the {source} source")


def not_text_message(where: str, name: str, what: str) -> str:
    return f"{where}: field {name!r} holds {what}, not text; pick a string column or a template over string fields"


def warn_missing(source: str, count: int, on_missing: str) -> None:
    if count:
        import warnings

        what = "never selected" if on_missing == "skip" else "scored as empty text"
        warnings.warn(f"{source}: {count} rows have a missing text field and are {what} (on_missing: {on_missing})",
                      SelectkitWarning, stacklevel=2)


# ---------------------------------------------------------------- identity


def source_fingerprint(path: Path | list[Path], *, text: str, id_column: str | None, limit: int | None, reader: str,
                       on_missing: str = "error", memo: Path | None = None) -> str:
    """Identity of a source as read: its bytes plus the settings that shape the examples."""
    paths = path if isinstance(path, list) else [path]
    settings = json.dumps([text, id_column, limit, reader, on_missing])
    body = "".join(path_fingerprint(p, memo) for p in paths)
    return hashlib.sha256((body + settings).encode()).hexdigest()


# ---------------------------------------------------------------- files and formats


def source_files(path: Path) -> list[Path]:
    """The files of a source: the file (or folder) itself, or the matches of a glob pattern such
    as `data/pool-*.parquet`, sorted by name (their rows follow one another in that order). In
    object storage (an ObjectPath) each file comes pinned to the version the store reports now."""
    if not isinstance(path, Path):  # an ObjectPath: one listing or one HEAD, never a download
        if any(c in path.name for c in "*?["):
            return path.parent.glob(path.name)
        return [path.pinned()] if path.exists() else [path]
    if any(c in path.name for c in "*?["):
        return sorted(p for p in path.parent.glob(path.name) if p.is_file())
    return [path]


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


def open_rows(name: str, path: Path, reader: Reader) -> RowSource:
    """`reader.open(path)` with every failure turned into a DataError naming the file."""
    try:
        return reader.open(path)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: {path} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except Exception as exc:
        raise DataError(f"{name}: cannot read {path} as {reader.name}: {exc}") from exc


def read_ids(frame: pl.DataFrame, id_column: str | None, first_row: int, source: str, where) -> pl.Series:
    """The id of each row: the given column (no nulls), else the row number."""
    if id_column is None:
        return pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64, eager=True).alias("id")
    if id_column not in frame.columns:
        raise _id_not_found(id_column, source, frame.columns)
    ids = frame[id_column].alias("id")
    if ids.dtype.is_nested():
        raise _id_not_scalar(where(first_row), id_column, str(ids.dtype))
    if ids.null_count():
        raise _id_missing(where(first_row + int(ids.is_null().arg_max())), id_column)
    return ids


def check_first_ids(head: FirstRows, id_column: str | None, source: str) -> None:
    """`read_ids` and `check_unique` on validate's first rows, in plain Python (no polars)."""
    if id_column is None:
        return
    if id_column not in head.columns:
        raise _id_not_found(id_column, source, head.columns)
    seen: dict = {}
    for i, row in enumerate(head.rows):
        value = row.get(id_column)
        if isinstance(value, dict | list):
            raise _id_not_scalar(head.where(i), id_column, head.kind(id_column, value))
        if value is None:
            raise _id_missing(head.where(i), id_column)
        if value in seen:
            raise _id_duplicate(id_column, source, value, f" ({head.where(seen[value])} and {head.where(i)})")
        seen[value] = i


def _id_not_found(id_column: str, source: str, columns: list[str]) -> DataError:
    return DataError(f"{source}: id column {id_column!r} not found (columns: {', '.join(columns)})")


def _id_not_scalar(where: str, id_column: str, what: str) -> DataError:
    return DataError(f"{where}: id column {id_column!r} holds {what}; ids must be strings or integers")


def _id_missing(where: str, id_column: str) -> DataError:
    return DataError(f"{where}: id column {id_column!r} has a missing value")


def _id_duplicate(id_column: str, source: str, value, at: str) -> DataError:
    return DataError(f"{source}: id column {id_column!r} has duplicate value {value!r}{at}")


def check_unique(ids: pl.Series, id_column: str | None, source: str, where=None) -> None:
    dup = ids.is_duplicated()
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())
        value = ids[int(rows[0])]
        same = rows[ids.gather(rows) == value]
        at = f" ({where(int(same[0]))} and {where(int(same[1]))})" if where is not None and len(same) > 1 else ""
        raise _id_duplicate(id_column, source, value, at)


def load_dataset(name: str, path: Path, *, text: str, id_column: str | None, limit: int | None,
                 fmt: str | None, readers: dict[str, type[Reader]], on_missing: str = "error") -> Dataset:
    """Read a (small) source whole. Ids default to the row number; duplicate ids are an error."""
    files = source_files(path)
    if not files or not all(p.exists() for p in files):
        raise DataError(f"{name}: file not found: {path}")
    reader = pick_reader(files[0], readers, fmt, name)
    frames = []
    for file in files:
        src = open_rows(name, file, reader)
        frames.append((src, src.slice(0, src.rows)))
    for src, part in frames:
        if (bad := src.not_text(part, 0, text_columns(text))) is not None:
            raise DataError(not_text_message(src.where(bad[0]), bad[1], bad[2]))
    frame = pl.concat([f for _, f in frames], how="diagonal_relaxed") if len(frames) > 1 else frames[0][1]
    sizes = np.cumsum([0] + [f.height for _, f in frames])

    def where(row: int) -> str:
        k = int(np.searchsorted(sizes, row, side="right") - 1)
        return frames[k][0].where(row - int(sizes[k]))

    if limit is not None:
        frame = frame.head(limit)
    if frame.height == 0:
        raise DataError(f"{name}: {path} has no rows")
    rendered = render_texts(frame, text, name, on_missing=on_missing, where=where)
    warn_missing(name, rendered.missing, on_missing)
    ids = read_ids(frame, id_column, 0, name, where)
    check_unique(ids, id_column, name, where)
    fingerprint = source_fingerprint(files, text=text, id_column=id_column, limit=limit, reader=reader.name,
                                     on_missing=on_missing)
    return Dataset(name=name, rows=frame, ids=ids, texts=rendered.texts, fingerprint=fingerprint, path=path,
                   usable=rendered.usable)
