"""Built-in data readers: jsonl, json, csv, parquet, and `datasets.save_to_disk` folders.

jsonl and parquet read any row range without reading the rest of the file (a line index for
jsonl, row groups for parquet), so pools of those formats never need to fit in memory.
"""

from __future__ import annotations

import io
import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from selectkit.plugin import (
    DataError,
    FirstRows,
    InMemory,
    Reader,
    RowSource,
    hookimpl,
    lazy_import,
    require,
    whole,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

pl = lazy_import("polars")  # polars loads when data is read, not when a recipe is validated

_BLOCK = 1 << 22
_HEAD_BLOCK = 1 << 16  # validate reads a file's first rows: a small block, not 4 MiB


def _line_ends(data: bytes, few: bool) -> list[int]:
    """Offsets of the newlines in `data`: by numpy over a whole block, or (`few`: validate's look at a
    file's first lines) by bytes.find, which needs no numpy."""
    if few:
        ends, at = [], data.find(b"\n")
        while at >= 0:
            ends.append(at)
            at = data.find(b"\n", at + 1)
        return ends
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10).tolist()


class JsonlRows(RowSource):
    """Rows of a jsonl file by line index: the byte offset and line number of every
    `STEP`-th non-blank line, built in one pass; a row range is parsed from its bytes alone."""

    STEP = 1024

    def __init__(self, path: Path, stop: int | None = None):
        """Index the whole file, or only its first `stop` rows (validate's cheap look at a file)."""
        self.path = path
        marks_at, marks_line, rows = [], [], 0
        offset, line_no, pending = 0, 0, b""
        with path.open("rb") as handle:  # a local file, or an object in a store (streamed in blocks)
            while True:
                block = handle.read(_BLOCK if stop is None else _HEAD_BLOCK)
                if not block:
                    break
                data = pending + block
                start = 0
                for end in _line_ends(data, stop is not None):
                    if data[start:end].strip():
                        if rows % self.STEP == 0:
                            marks_at.append(offset + start)
                            marks_line.append(line_no)
                        rows += 1
                    line_no += 1
                    start = end + 1
                offset += start
                pending = data[start:]
                if stop is not None and rows >= stop:
                    pending = b""
                    break
            if pending.strip():
                if rows % self.STEP == 0:
                    marks_at.append(offset)
                    marks_line.append(line_no)
                rows += 1
        self.rows = rows
        self.marks_at, self.marks_line = marks_at, marks_line
        self._columns: list[str] | None = None

    def _lines(self, lo: int, hi: int) -> tuple[list[bytes], list[int]]:
        """The raw lines of rows [lo, hi) and their 1-based line numbers."""
        if hi <= lo:
            return [], []
        mark = lo // self.STEP
        row, line_no = mark * self.STEP, self.marks_line[mark]
        lines, numbers = [], []
        with self.path.open("rb") as handle:
            handle.seek(self.marks_at[mark])
            for raw in handle:
                line_no += 1
                if not raw.strip():
                    continue
                if row >= lo:
                    lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
                    numbers.append(line_no)
                row += 1
                if row >= hi:
                    break
        return lines, numbers

    def slice(self, lo: int, hi: int) -> pl.DataFrame:
        lines, numbers = self._lines(lo, min(hi, self.rows))
        if not lines:
            return pl.DataFrame()
        try:
            return pl.read_ndjson(io.BytesIO(b"".join(lines)), infer_schema_length=None)
        except Exception as exc:  # find the line to blame; polars does not say
            for raw, number in zip(lines, numbers):
                self.parse(raw, number)
            raise DataError(f"{self.path.name}: cannot read lines {numbers[0]}-{numbers[-1]}: {exc}") from None

    def parse(self, raw: bytes, number: int) -> dict:
        """One line's object, or a DataError naming the line (bad UTF-8, bad JSON, not an object)."""
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as bad:
            raise DataError(f"{self.path.name}:{number}: not valid UTF-8 (byte {bad.start} of the line)") from None
        except ValueError as bad:
            raise DataError(f"{self.path.name}:{number}: not valid JSON: {bad}") from None
        if not isinstance(value, dict):
            raise DataError(f"{self.path.name}:{number}: a jsonl line must be a JSON object, "
                            f"not {type(value).__name__}") from None
        return value

    def first_rows(self, rows: int) -> FirstRows:
        """Rows [0, rows) parsed by `json` alone (validate's look at a file loads no polars)."""
        lines, numbers = self._lines(0, min(rows, self.rows))
        return FirstRows.of_dicts([self.parse(raw, n) for raw, n in zip(lines, numbers)],
                                  lambda row: f"{self.path.name}:{numbers[row] if row < len(numbers) else row + 1}")

    def not_text(self, frame: pl.DataFrame, lo: int, columns: list[str]) -> tuple[int, str, str] | None:
        """polars reads a field that holds text in some lines and objects or arrays in others as
        text (the JSON printed): find such a line, checking only values that look like JSON."""
        suspects: dict[int, list[str]] = {}
        for name in columns:
            if name in frame.columns and frame.schema[name] == pl.String:
                col = frame[name]
                looks = (col.str.starts_with("{") & col.str.ends_with("}")) | \
                    (col.str.starts_with("[") & col.str.ends_with("]"))
                for i in np.flatnonzero(looks.fill_null(False).to_numpy()).tolist():
                    suspects.setdefault(i, []).append(name)
        if not suspects:
            return None
        lines, _ = self._lines(lo, lo + frame.height)
        for i in sorted(suspects):
            value = json.loads(lines[i])
            for name in suspects[i]:
                if isinstance(value.get(name), dict | list):
                    return lo + i, name, "a JSON object" if isinstance(value[name], dict) else "a JSON array"
        return None

    @property
    def columns(self) -> list[str]:
        if self._columns is None:
            self._columns = list(self.slice(0, min(self.rows, 256)).columns)
        return self._columns

    def line(self, row: int) -> int:
        _, numbers = self._lines(row, row + 1)
        return numbers[0] if numbers else row + 1

    def where(self, row: int) -> str:
        return f"{self.path.name}:{self.line(row)}"


class JsonLines(Reader):
    """JSON lines (one object per line, blank lines skipped); any row range read by a line index."""

    name = "jsonl"
    suffixes = (".jsonl", ".ndjson", ".jsonl.gz")

    def read(self, path: Path) -> pl.DataFrame:
        return self.open(path).slice(0, 1 << 62)

    def open(self, path: Path) -> RowSource:
        if path.name.endswith(".gz"):
            return InMemory(path, pl.read_ndjson(whole(path), infer_schema_length=None))
        return JsonlRows(path)

    def count_rows(self, path: Path) -> int | None:
        if path.name.endswith(".gz"):
            return None
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())

    def head(self, path: Path, rows: int):
        """The first lines only (no index of the whole file)."""
        if path.name.endswith(".gz"):
            return super().head(path, rows)
        source = JsonlRows(path, stop=rows)
        return source.slice(0, rows), source.where

    def first_rows(self, path: Path, rows: int) -> FirstRows:
        if path.name.endswith(".gz"):
            return super().first_rows(path, rows)
        return JsonlRows(path, stop=rows).first_rows(rows)


class ParquetRows(RowSource):
    def __init__(self, path: Path):
        self.path = path
        self.scan = pl.scan_parquet(path)
        self.rows = self.scan.select(pl.len()).collect().item()

    def slice(self, lo: int, hi: int) -> pl.DataFrame:
        return self.scan.slice(lo, max(0, min(hi, self.rows) - lo)).collect()

    @property
    def columns(self) -> list[str]:
        return list(self.scan.collect_schema().names())

    def column(self, name: str, lo: int, hi: int) -> pl.Series | None:
        if name not in self.columns:
            return None
        return self.scan.select(name).slice(lo, max(0, min(hi, self.rows) - lo)).collect()[name]


class StoredParquetRows(RowSource):
    """Parquet in object storage: the footer, then only the row groups a row range touches, by
    range requests (pyarrow over the store's file object); the object is checked unchanged first."""

    def __init__(self, path: Any):
        import pyarrow.parquet as pq

        self.path = path
        self.handle = path.open("rb")
        self.file = pq.ParquetFile(self.handle)
        meta = self.file.metadata
        self.rows = meta.num_rows
        self.group_starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _read(self, lo: int, hi: int, columns: list[str] | None) -> pl.DataFrame:
        hi = min(hi, self.rows)
        if hi <= lo:
            return pl.DataFrame(schema=[(c, pl.Null) for c in columns or []]) if columns else pl.DataFrame()
        first = int(np.searchsorted(self.group_starts, lo, side="right") - 1)
        last = int(np.searchsorted(self.group_starts, hi, side="left"))
        self.path.verify()
        table = self.file.read_row_groups(list(range(first, last)), columns=columns)
        start = lo - int(self.group_starts[first])
        return pl.from_arrow(table.slice(start, hi - lo))

    def slice(self, lo: int, hi: int) -> pl.DataFrame:
        return self._read(lo, hi, None)

    @property
    def columns(self) -> list[str]:
        return list(self.file.schema_arrow.names)

    def column(self, name: str, lo: int, hi: int) -> pl.Series | None:
        if name not in self.columns:
            return None
        return self._read(lo, hi, [name])[name]


class Json(Reader):
    """A JSON array of objects, read whole."""

    name = "json"
    suffixes = (".json",)

    def read(self, path: Path) -> pl.DataFrame:
        return pl.read_json(whole(path), infer_schema_length=None)


class Csv(Reader):
    """Comma- (or, for .tsv, tab-) separated values with a header row, read whole."""

    name = "csv"
    suffixes = (".csv", ".tsv")

    def read(self, path: Path) -> pl.DataFrame:
        return pl.read_csv(whole(path), separator="\t" if path.suffix == ".tsv" else ",", infer_schema_length=10000)

    def head(self, path: Path, rows: int):
        frame = pl.read_csv(whole(path), separator="\t" if path.suffix == ".tsv" else ",", n_rows=rows)
        return frame, lambda row: f"{path.name} row {row + 1}"


class Parquet(Reader):
    """Apache Parquet; any row range read by row groups (the format for pools larger than memory)."""

    name = "parquet"
    suffixes = (".parquet",)

    def read(self, path: Path) -> pl.DataFrame:
        return pl.read_parquet(whole(path))

    def open(self, path: Path) -> RowSource:
        if isinstance(path, Path):
            return ParquetRows(path)
        if find_spec("pyarrow") is None:  # without pyarrow an object is read whole
            return InMemory(path, self.read(path))
        return StoredParquetRows(path)

    def count_rows(self, path: Path) -> int | None:
        if not isinstance(path, Path):
            return self.open(path).rows
        return pl.scan_parquet(path).select(pl.len()).collect().item()

    def head(self, path: Path, rows: int):
        source = self.open(path)
        return source.slice(0, rows), source.where


class HuggingFaceDisk(Reader):
    """A folder written by `datasets.Dataset.save_to_disk` (needs the `models` extra)."""

    name = "hf_disk"
    reads_folders = True

    def read(self, path: Path) -> pl.DataFrame:
        if not isinstance(path, Path):
            raise DataError(f"{path}: a save_to_disk folder must be on a local disk; write the split as parquet "
                            "shards to read it from object storage")
        datasets = require("datasets", "models", "the hf_disk reader")
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            raise DataError(f"{path} is a DatasetDict with splits {', '.join(dataset)}: point `path` at one split's "
                            f"folder, e.g. {path / next(iter(dataset))}")
        return pl.from_arrow(dataset.data.table)


@hookimpl
def register_readers(register):
    for reader in (JsonLines, Json, Csv, Parquet, HuggingFaceDisk):
        register(reader)
