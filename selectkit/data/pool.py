"""The candidate pool, columnar and out of core: one or more files read by fixed row ranges
(shards) that selectkit computes from the files' row counts, never from an engine's layout.

The read step builds the pool's index once per content (ids, a stable key per row, token
counts, which rows are usable) as a sharded cache entry; everything else reads one shard at
a time (`pool.shard(i)` -> a Dataset with that shard's rows and texts). Whole-pool views
(`pool.texts`, `pool.rows`) exist for components that truly need them and cost memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from selectkit.contract.lazy import lazy_import
from selectkit.contract.readers import RowSource
from selectkit.data.sources import (
    Dataset,
    check_unique,
    count_tokens,
    not_text_message,
    open_rows,
    read_ids,
    render_texts,
    text_columns,
    warn_missing,
)
from selectkit.errors import DataError

pl = lazy_import("polars")

INDEX_VERSION = "1"


@dataclass(frozen=True)
class SourceSpec:
    """How to read one source, resolved by the planner (plain data: it travels to workers)."""

    name: str
    files: tuple[Path, ...]
    reader: type  # a selectkit.data.sources.Reader subclass
    text: str = "text"
    id_column: str | None = None
    limit: int | None = None
    on_missing: str = "error"
    fingerprint: str = ""
    shard_rows: int = 65536


class Table:
    """The rows of a source's files, one after another, addressed by global row number."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        reader = spec.reader()
        self.parts: list[RowSource] = [open_rows(spec.name, f, reader) for f in spec.files]
        sizes = [p.rows for p in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.starts[-1])
        self.rows = min(total, spec.limit) if spec.limit is not None else total

    @cached_property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for part in self.parts:
            seen.update(dict.fromkeys(part.columns))
        return list(seen)

    def spans(self, lo: int, hi: int) -> Iterator[tuple[RowSource, int, int, int]]:
        """(file, its first row, its last row + 1, the file's global offset) for each file that global
        rows [lo, hi) touch, in order."""
        hi = min(hi, self.rows)
        for k, part in enumerate(self.parts):
            a, b = int(self.starts[k]), int(self.starts[k + 1])
            if b > lo and a < hi:
                yield part, max(lo, a) - a, min(hi, b) - a, a

    def slice(self, lo: int, hi: int) -> pl.DataFrame:
        frames = [part.slice(start, stop) for part, start, stop, _ in self.spans(lo, hi)]
        if not frames:
            return pl.DataFrame()
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")

    def where(self, row: int) -> str:
        k = int(np.searchsorted(self.starts, row, side="right") - 1)
        return self.parts[k].where(row - int(self.starts[k]))

    def not_text(self, frame: pl.DataFrame, lo: int, columns: list[str]) -> tuple[int, str, str] | None:
        """RowSource.not_text over the parts that rows [lo, lo + frame.height) span (global rows)."""
        for part, start, stop, offset in self.spans(lo, lo + frame.height):
            bad = part.not_text(frame.slice(offset + start - lo, stop - start), start, columns)
            if bad is not None:
                return offset + bad[0], bad[1], bad[2]
        return None

    def column(self, name: str, lo: int = 0, hi: int | None = None) -> pl.Series:
        """One column of rows [lo, hi) (null in the files that lack it), reading only that column."""
        parts = []
        for part, start, stop, _ in self.spans(lo, self.rows if hi is None else hi):
            series = part.column(name, start, stop)
            parts.append(series if series is not None else pl.Series(name, [None] * (stop - start)))
        if not parts:
            return pl.Series(name, [])
        return parts[0] if len(parts) == 1 else concat_series(parts)


def concat_series(parts: list) -> pl.Series:
    """Series of shards one after another, types widened where shards disagree (int and float ids)."""
    if len(parts) == 1:
        return parts[0]
    name = parts[0].name
    return pl.concat([p.alias(name).to_frame() for p in parts], how="vertical_relaxed").to_series()


def shard_ranges(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """Fixed row ranges [lo, hi) of `shard_rows` rows (the last one shorter)."""
    step = max(1, int(shard_rows))
    return [(lo, min(rows, lo + step)) for lo in range(0, max(rows, 1), step)] if rows else []


def read_shard(table: Table, lo: int, hi: int) -> Dataset:
    """Rows [lo, hi) with their ids and rendered texts (every data problem named by line)."""
    spec = table.spec
    frame = table.slice(lo, hi)
    if (bad := table.not_text(frame, lo, text_columns(spec.text))) is not None:
        raise DataError(not_text_message(table.where(bad[0]), bad[1], bad[2]))
    rendered = render_texts(frame, spec.text, spec.name, on_missing=spec.on_missing, where=table.where, first_row=lo,
                            known_columns=table.columns)
    ids = read_ids(frame, spec.id_column, lo, spec.name, table.where)
    return Dataset(name=spec.name, rows=frame, ids=ids, texts=rendered.texts, fingerprint=spec.fingerprint,
                   path=spec.files[0] if spec.files else None, usable=rendered.usable,
                   meta={"first_row": lo, "missing": rendered.missing})


def index_shard(table: Table, lo: int, hi: int) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """What the index keeps of one shard: its ids, and per row a key, a token count, usable."""
    from selectkit.contract.keyed_random import row_keys

    ds = read_shard(table, lo, hi)
    arrays = {"keys": row_keys(ds.ids), "tokens": count_tokens(ds.texts), "usable": ds.usable,
              "missing": np.array([ds.meta["missing"]], dtype=np.int64)}
    return pl.DataFrame({"id": ds.ids}), arrays


@dataclass
class PoolIndex:
    ids: Any  # pl.Series
    keys: np.ndarray
    tokens: np.ndarray
    usable: np.ndarray
    missing: int = 0


def build_index(table: Table, cache: Any, key: str, progress=None) -> PoolIndex:
    """Index every shard missing from the cache entry (resumable), then assemble and check ids;
    a shard found corrupt while assembling is indexed again."""
    ranges = shard_ranges(table.rows, table.spec.shard_rows)
    entry = cache.sharded("pool", key, len(ranges), label=f"pool index: {table.spec.name}", rows=table.rows)
    for i in entry.missing():
        index_into(entry, table, i, ranges[i])
        if progress:
            progress(i + 1, len(ranges))
    index = load_index(entry, table, ranges)
    if not entry.complete():
        entry.finish()
    return index


def index_into(entry: Any, table: Table, i: int, bounds: tuple[int, int]) -> None:
    ids, arrays = index_shard(table, *bounds)
    with entry.stage(i) as staging:
        staging.add_file("ids.parquet", lambda p, frame=ids: frame.write_parquet(p, statistics=False))
        staging.add_arrays("arrays.npz", arrays)
        staging.commit()


def load_index(entry: Any, table: Table, ranges: list[tuple[int, int]]) -> PoolIndex:
    from selectkit.storage.cache import read_npz

    ids, arrays = [], []
    for i in range(entry.count):
        folder = entry.open(i)
        if folder is None:  # corrupt (reported and removed by `open`): index it again
            index_into(entry, table, i, ranges[i])
            folder = entry.open(i)
        ids.append(pl.read_parquet(folder / "ids.parquet")["id"])
        arrays.append(read_npz(folder / "arrays.npz"))
    if not arrays:
        raise DataError(f"{table.spec.name}: {', '.join(str(f) for f in table.spec.files)} has no rows")
    mixed = len({s.dtype for s in ids}) > 1  # shards read with different id types: keys may disagree
    all_ids = concat_series(ids)
    del ids
    index = PoolIndex(all_ids, *(np.concatenate([a[k] for a in arrays]) for k in ("keys", "tokens", "usable")),
                      missing=int(sum(int(a["missing"][0]) for a in arrays)))
    del arrays
    # equal ids have equal keys: sorting the 8-byte keys is far lighter than hashing every id;
    # only when two keys are equal (a repeated id, or a hash collision) are the ids compared
    order = np.sort(index.keys)
    if mixed or (len(order) > 1 and bool((order[1:] == order[:-1]).any())):
        check_unique(all_ids, table.spec.id_column, table.spec.name, table.where)
    del order
    warn_missing(table.spec.name, index.missing, table.spec.on_missing)
    return index


@dataclass
class Pool:
    """The pool as the executor and components see it: ids, keys, token counts and usable
    rows for every row, and the rows themselves one shard at a time."""

    spec: SourceSpec
    table: Table
    index: PoolIndex | None = None  # None on a worker that only reads shards
    _columns_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def path(self) -> Path | None:
        return self.spec.files[0] if self.spec.files else None

    def __len__(self) -> int:
        return self.table.rows

    @property
    def ids(self):
        return self.index.ids

    @property
    def keys(self) -> np.ndarray:
        return self.index.keys

    @property
    def token_counts(self) -> np.ndarray:
        return self.index.tokens

    @property
    def usable(self) -> np.ndarray:
        return self.index.usable

    @property
    def columns(self) -> list[str]:
        return self.table.columns

    @cached_property
    def shard_ranges(self) -> list[tuple[int, int]]:
        return shard_ranges(len(self), self.spec.shard_rows)

    def shard(self, i: int) -> Dataset:
        lo, hi = self.shard_ranges[i]
        return read_shard(self.table, lo, hi)

    def slice(self, lo: int, hi: int) -> Dataset:
        return read_shard(self.table, lo, hi)

    def take(self, rows: np.ndarray) -> Dataset:
        """Rows by index, in the order given, reading only the shards that hold them."""
        return take(self, rows)

    def column(self, name: str) -> pl.Series:
        """One column over every row (kept for reuse)."""
        if name not in self._columns_cache:
            if name not in self.columns:
                raise DataError(f"{self.name}: no column {name!r} (columns: {', '.join(self.columns)})")
            self._columns_cache[name] = self.table.column(name)  # that column alone, file by file
        return self._columns_cache[name]

    def group_counts(self, name: str, rows: np.ndarray) -> list[tuple[str, int, int]]:
        """(value, count among `rows`, count in the pool) per value of a column, nulls as "(none)",
        sorted by value: read shard by shard, so memory grows with the values, not the pool."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        pool_counts: dict[str, int] = {}
        chosen: dict[str, int] = {}
        for lo, hi in self.shard_ranges:
            values = self.table.column(name, lo, hi).cast(pl.String).fill_null("(none)")
            here = rows[np.searchsorted(rows, lo):np.searchsorted(rows, hi)] - lo
            for counts, series in ((pool_counts, values), (chosen, values.gather(here))):
                for value, count in series.value_counts().iter_rows():
                    counts[value] = counts.get(value, 0) + count
        return [(value, chosen.get(value, 0), total) for value, total in sorted(pool_counts.items())]

    def where(self, row: int) -> str:
        return self.table.where(row)

    # whole-pool views: memory grows with the pool; model-free paths never use them
    @cached_property
    def texts(self) -> list[str]:
        out: list[str] = []
        for i in range(len(self.shard_ranges)):
            out.extend(self.shard(i).texts)
        return out

    @cached_property
    def rows(self) -> pl.DataFrame:
        frames = [self.table.slice(lo, hi) for lo, hi in self.shard_ranges]
        return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]

    def dataset(self) -> Dataset:
        """The whole pool in memory (small pools; tests)."""
        return Dataset(name=self.name, rows=self.rows, ids=self.ids, texts=self.texts, fingerprint=self.fingerprint,
                       path=self.path, usable=self.usable)


def take(pool: Pool, rows: np.ndarray) -> Dataset:
    """Rows of the pool by index, in the order given, reading only the shards that hold them."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.array([lo for lo, _ in pool.shard_ranges], dtype=np.int64)
    shard_of = np.searchsorted(starts, rows, side="right") - 1
    frames, ids, texts, where = [], [], [], np.empty(len(rows), dtype=np.int64)
    at = 0
    for i in np.unique(shard_of).tolist():
        here = np.flatnonzero(shard_of == i)
        ds = pool.shard(i)
        local = (rows[here] - int(starts[i])).tolist()
        frames.append(ds.rows[local])
        ids.append(ds.ids.gather(local))
        texts.extend(ds.texts[j] for j in local)
        where[here] = np.arange(at, at + len(here))
        at += len(here)
    if not frames:
        return Dataset(name=pool.name, rows=pool.table.slice(0, 0), ids=pool.ids.slice(0, 0), texts=[],
                       fingerprint=pool.fingerprint)
    order = where.tolist()  # position in the concatenation of each requested row
    frame = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
    all_ids = concat_series(ids)
    return Dataset(name=pool.name, rows=frame[order], ids=all_ids.gather(order), texts=[texts[j] for j in order],
                   fingerprint=pool.fingerprint, usable=pool.usable[rows])
