"""The gradient store: per-example gradient features of one data source at one checkpoint, as the
`gradients` provider wrote them into the cache, one shard per row range, read back shard by shard
(memory-mapped) and never concatenated.

Features are stored in the request's `feature_dtype`: float32 as computed, or float16 as unit rows
(each row divided by its L2 norm, which is kept beside it in float32) so that half precision keeps
its 11-bit mantissa at every scale: projected gradients of a trained model are small enough for
plain float16 to round many coordinates to subnormals or zero. A block reads back as float32
(float16 rows times their scale); the scores multiply blocks in float32 (float64 for float32
features, as ever) and accumulate over checkpoints in float64.

It lives in the core's storage (it began in the built-in plugins' influence library) because the
core reads it too: `selectkit explain --influence` (selectkit.results.influence) opens a run's store
and searches it (selectkit.results.neighbours). The `gradients` provider and the influence scores
reach it through `selectkit.plugin`. numpy is imported on first use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from selectkit.contract.lazy import lazy_import
from selectkit.errors import SelectkitError

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap

HALF = "float16"
ARRAY_BLOCK_ROWS = 4096  # rows an in-memory array is cut into when it is scored like a store
BLOCK_BYTES = 32 << 20  # float32 bytes of one decoded block of stored rows


def block_rows(dim: int) -> int:
    """Rows of a decoded block: 1,024 at k = 8,192; a whole 4,096-row shard at k <= 2,048."""
    return max(256, BLOCK_BYTES // (4 * max(dim, 1)))


ENCODE_ROWS = 256  # rows encoded at a time: a shard's float64 temporaries stay a few MB at k = 8192


def encode(features: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """The arrays a shard stores for `features` (N, D) float32 in `dtype` (float32 | float16)."""
    features = np.asarray(features, dtype=np.float32)
    if dtype != HALF:
        return {"features": features}
    units = np.empty(features.shape, dtype=np.float16)
    scales = np.empty(len(features), dtype=np.float64)
    for lo in range(0, len(features), ENCODE_ROWS):  # row blocks: no float64 copy of a whole shard
        block = features[lo:lo + ENCODE_ROWS]
        scales[lo:lo + len(block)] = np.linalg.norm(block.astype(np.float64), axis=1)
        units[lo:lo + len(block)] = block / np.where(scales[lo:lo + len(block)] > 0, scales[lo:lo + len(block)],
                                                     1.0)[:, None].astype(np.float32)
    return {"features": units, "scales": scales.astype(np.float32)}


def decode(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """A shard's features as float32 (float16 unit rows times their scales)."""
    features = arrays["features"]
    if "scales" not in arrays:
        return np.asarray(features)
    return np.asarray(features, dtype=np.float32) * np.asarray(arrays["scales"], dtype=np.float32)[:, None]


class StoredFeatures:
    """One checkpoint's features of one data source: `blocks()` yields (lo, hi, rows) shard by shard,
    each shard memory-mapped only while it is used, so memory holds one shard whatever the pool.
    `np.asarray(stored)` concatenates them (targets are small; for the pool, stream)."""

    def __init__(self, shards: Any, indices: list[int], rows: int, dim: int, dtype: str):
        self.shards, self.indices, self.rows, self.dim, self.dtype = shards, list(indices), rows, dim, dtype

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.dim

    def __len__(self) -> int:
        return self.rows

    def _read(self, index: int) -> dict[str, np.ndarray]:
        """Shard `index`'s arrays, memory-mapped; a missing or corrupt one is an error that says what to do."""
        arrays = self.shards.read(index, mmap=True)
        if arrays is None:
            raise SelectkitError(f"shard {index} of the gradient store is missing or corrupt (it was removed); "
                                 "run the recipe again to recompute it")
        return arrays

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(lo, hi, float32 rows) blocks in row order: each shard cut into `block_rows(dim)` rows, so a
        scorer holding one block of every checkpoint holds a few tens of MB whatever the shard size."""
        lo, step = 0, block_rows(self.dim)
        for index in self.indices:
            arrays = self._read(index)
            rows = len(arrays["features"])
            for a in range(0, rows, step):
                block = decode({k: v[a:a + step] for k, v in arrays.items()})
                yield lo + a, lo + a + len(block), block
                del block
            lo += rows
            del arrays  # unmapped before the next shard is opened

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (sorted, int) as float32, reading only those rows of the shards that hold them."""
        out = np.zeros((len(rows), self.dim), np.float32)
        lo = 0
        for index in self.indices:
            arrays = self._read(index)
            hi = lo + len(arrays["features"])
            at = np.nonzero((rows >= lo) & (rows < hi))[0]
            if len(at):
                out[at] = decode({k: v[rows[at] - lo] for k, v in arrays.items()})
            lo = hi
            del arrays
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        parts = [block for _, _, block in self.blocks()]
        out = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        return out if dtype is None else out.astype(dtype)


def checkpoint_shards(point: int, row_shards: int) -> list[int]:
    """The shards of a gradient store entry that hold checkpoint `point`'s rows, in row order."""
    return list(range(point * row_shards, (point + 1) * row_shards))


def open_store(shards: Any, row_shards: int, points: int, dtype: str) -> list[StoredFeatures]:
    """One data source's StoredFeatures per checkpoint, from its cache entry (`shards`: a Sharded), as
    the gradients provider laid it out; a shard missing or corrupt is the store's error (run again)."""
    out = []
    for point in range(points):
        indices = checkpoint_shards(point, row_shards)
        rows, dim = 0, 0
        probe = StoredFeatures(shards, indices, 0, 0, dtype)
        for index in indices:
            features = probe._read(index)["features"]
            rows, dim = rows + len(features), int(features.shape[1])
            del features
        out.append(StoredFeatures(shards, indices, rows, dim, dtype))
    return out


def row_blocks(features: Any) -> Iterator[tuple[int, int, np.ndarray]]:
    """(lo, hi, rows) blocks of stored features, or of an in-memory array cut into ARRAY_BLOCK_ROWS."""
    if hasattr(features, "blocks"):
        yield from features.blocks()
        return
    array = np.asarray(features)
    for lo in range(0, max(len(array), 1), ARRAY_BLOCK_ROWS):
        yield lo, min(lo + ARRAY_BLOCK_ROWS, len(array)), array[lo:lo + ARRAY_BLOCK_ROWS]


def aligned_blocks(train: Sequence[Any]) -> Iterator[list[tuple[int, int, np.ndarray]]]:
    """The same row block of every checkpoint's train features, block after block."""
    iterators = [row_blocks(x) for x in train]
    for blocks in zip(*iterators):
        if len({(lo, hi) for lo, hi, _ in blocks}) != 1:
            raise ValueError("checkpoints' features are stored in different row blocks")
        yield list(blocks)


def unit_rows(x: np.ndarray, dtype: Any = None) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as LESS's `merge_and_normalize_info`."""
    x = np.asarray(x, dtype or np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def is_half(features: Any) -> bool:
    """True for features stored in half precision (their products run in float32)."""
    dtype = getattr(features, "dtype", None)
    return str(dtype) in (HALF, "float16")
