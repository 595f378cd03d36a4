"""Randomness keyed by row identity: each row's draw is a counter-based hash of (recipe seed,
stage labels, row id), so a selection never depends on row order, shard count or workers.

    keys = row_keys(pool.ids)                 # uint64 per row, stable across runs and machines
    u = uniform(seed, ("stage", "draw"), keys)  # (N,) floats in (0, 1)
"""

from __future__ import annotations

import hashlib

from selectkit.contract.lazy import lazy_import

np = lazy_import("numpy")  # numpy loads when a draw is made, not when a recipe is validated

_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_INT_TAG = 0x9E3779B97F4A7C15  # keeps the integer 7 and the string "7" apart
_CHUNK = 1 << 20  # string ids hashed this many at a time (bounds the temporary bytes)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer over uint64 (wrapping): a bijection that spreads every input bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
    return x ^ (x >> np.uint64(31))


def label_hash(seed: int, labels: tuple[str, ...] | list[str]) -> np.uint64:
    """A 64-bit stream id for (seed, labels)."""
    text = "\x1f".join([str(int(seed)), *map(str, labels)]).encode("utf-8")
    return np.uint64(int.from_bytes(hashlib.sha256(text).digest()[:8], "little"))


def row_keys(ids) -> np.ndarray:
    """A stable uint64 per id (a polars Series): integers by value, everything else by the
    FNV-1a hash of its UTF-8 text. Equal ids get equal keys in every process and version."""
    import polars as pl

    series = ids if isinstance(ids, pl.Series) else pl.Series(list(ids))
    if series.dtype.is_integer():
        values = series.cast(pl.Int64).to_numpy().view(np.uint64)
        with np.errstate(over="ignore"):
            return mix64(values + np.uint64(_INT_TAG))
    text = series.cast(pl.String)
    out = np.empty(len(text), dtype=np.uint64)
    for start in range(0, len(text), _CHUNK):
        part = text.slice(start, _CHUNK)
        out[start:start + len(part)] = _fnv1a(part.to_list(), part.str.len_bytes().to_numpy())
    return mix64(out)


def _fnv1a(strings: list[str], lengths: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes, vectorised over rows (one numpy step per byte position)."""
    data = np.frombuffer("".join(strings).encode("utf-8"), dtype=np.uint8)
    lengths = lengths.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    h = np.full(len(strings), np.uint64(_FNV_OFFSET), dtype=np.uint64)
    alive = np.arange(len(strings))
    position = 0
    with np.errstate(over="ignore"):
        while len(alive):
            alive = alive[lengths[alive] > position]
            if not len(alive):
                break
            h[alive] = (h[alive] ^ data[starts[alive] + position].astype(np.uint64)) * np.uint64(_FNV_PRIME)
            position += 1
    return h


def uniform(seed: int, labels: tuple[str, ...] | list[str], keys: np.ndarray) -> np.ndarray:
    """A float64 in the open interval (0, 1) per key, for the stream (seed, labels)."""
    bits = mix64(np.asarray(keys, dtype=np.uint64) ^ label_hash(seed, labels))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def gumbel(seed: int, labels: tuple[str, ...] | list[str], keys: np.ndarray) -> np.ndarray:
    """Standard Gumbel noise per key: -log(-log(u))."""
    return -np.log(-np.log(uniform(seed, labels, keys)))


def canonical_order(keys: np.ndarray) -> np.ndarray:
    """Positions that sort rows by key: the same rows come out in the same order whatever
    order or shards they arrived in (for algorithms that must see rows in some order)."""
    return np.argsort(np.asarray(keys, dtype=np.uint64), kind="stable")


def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """A generator seeded from the recipe seed and stable labels, for draws that do not belong
    to rows (a k-means seed, a fold split of targets). Per-row draws use `uniform`/`gumbel`."""
    digest = hashlib.sha256("\x1f".join(labels).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def keyed_subset(keys: np.ndarray, seed: int, draws, eligible: np.ndarray | None = None) -> np.ndarray:
    """Positions of the rows kept by nested keyed draws, in key order: each `(labels, count)` of
    `draws` keeps the `count` rows with the smallest draw of stream (seed, labels) among the rows the
    previous draw kept (the first among the `eligible` rows, default all). A subset of a sample is
    then a function of the row ids alone, whatever the pool's order or size beyond the sample."""
    keys = np.asarray(keys, dtype=np.uint64)
    rows = np.arange(len(keys)) if eligible is None else np.flatnonzero(np.asarray(eligible, bool))
    for labels, count in draws:
        count = int(count)
        if count < len(rows):
            u = uniform(seed, tuple(labels), keys[rows])
            rows = rows[np.argsort(u, kind="stable")[:count]]
    return rows[canonical_order(keys[rows])]
