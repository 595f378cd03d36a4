"""The data-format contract: a `Reader` knows one file format and opens a file as a `RowSource`,
which reads any row range of it (jsonl by a line index, parquet by row groups, small formats from
memory via `InMemory`), so a pool never has to fit in memory. Readers register through
`register_readers`; polars frames are what they return."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover - annotations only: importing a reader stays cheap
    import polars as pl


class RowSource:
    """Random access to the rows of one file: `rows`, `columns`, `slice(lo, hi)` and `where(row)`."""

    rows: int
    path: Path

    def slice(self, lo: int, hi: int) -> pl.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def columns(self) -> list[str]:
        return list(self.slice(0, min(self.rows, 1)).columns) if self.rows else []

    def column(self, name: str, lo: int, hi: int) -> pl.Series | None:
        """One column of rows [lo, hi), None where the file lacks it (columnar formats read only it)."""
        frame = self.slice(lo, hi)
        return frame[name] if name in frame.columns else None

    def where(self, row: int) -> str:
        """Where row `row` (0-based) sits, for error messages."""
        return f"{self.path.name} row {row + 1}"

    def not_text(self, frame: pl.DataFrame, lo: int, columns: list[str]) -> tuple[int, str, str] | None:
        """(row, column, what) of the first row of `frame` (rows `lo`.. of this file) whose value in
        one of `columns` is a list or an object in the file although the column reads as text."""
        return None


class InMemory(RowSource):
    """A whole file read at once (json, csv and folders: formats without cheap random access)."""

    def __init__(self, path: Path, frame: pl.DataFrame):
        self.path, self.frame, self.rows = path, frame, frame.height

    def slice(self, lo: int, hi: int) -> pl.DataFrame:
        return self.frame.slice(lo, max(0, hi - lo))

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)


@dataclass
class FirstRows:
    """A source's first rows as plain dicts: what validate checks (columns, texts, ids, a scorer's
    `check_pool`) without loading polars or numpy. `columns` are every row's keys in order of first
    appearance (or the file's schema); a key absent from a row reads as None; `where(row)` places a
    row for messages (`pool.jsonl:61`)."""

    rows: list[dict[str, Any]]
    where: Callable[[int], str]
    columns: list[str]
    types: dict[str, str] = field(default_factory=dict)  # a nested column's type, where the file declares one

    def kind(self, column: str, value: Any) -> str:
        """What a list or object value of `column` is, in the file's own terms (for messages)."""
        if column in self.types:
            return self.types[column]
        return "a JSON object" if isinstance(value, dict) else "a JSON array"

    @classmethod
    def of_dicts(cls, rows: list[dict[str, Any]], where: Callable[[int], str]) -> FirstRows:
        return cls(rows, where, list(dict.fromkeys(k for row in rows for k in row)))

    @property
    def height(self) -> int:
        return len(self.rows)


def whole(path: Path) -> Path | bytes:
    """What a reader hands polars for a format read at once: a local path as is, an object in a
    store (selectkit.storage.objects.ObjectPath) as its bytes, downloaded whole."""
    return path if isinstance(path, Path) else path.read_bytes()


class Reader:
    """A file format. `read` returns every row; `open` gives row-range access (default: read it all)."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    reads_folders: ClassVar[bool] = False

    def read(self, path: Path) -> pl.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def count_rows(self, path: Path) -> int | None:
        """Row count without reading the data, when the format allows (for validate-time checks)."""
        return None

    def open(self, path: Path) -> RowSource:
        return InMemory(path, self.read(path))

    def head(self, path: Path, rows: int) -> tuple[pl.DataFrame, Any]:
        """The first `rows` rows (cheap where the format allows) and `where(row)` for messages."""
        source = self.open(path)
        return source.slice(0, min(rows, source.rows)), source.where

    def first_rows(self, path: Path, rows: int) -> FirstRows:
        """The first `rows` rows as plain dicts, for validate's checks. Default: `head` converted; a
        format that can parse its first rows without polars overrides it (jsonl does), which keeps
        `selectkit validate` from importing polars."""
        frame, where = self.head(path, rows)
        types = {name: str(dtype) for name, dtype in frame.schema.items() if dtype.is_nested()}
        return FirstRows(frame.to_dicts(), where, list(frame.columns), types)
