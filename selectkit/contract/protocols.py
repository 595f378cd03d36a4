"""What a component may use of the runtime, as small Protocols: the contract names these, never
the runtime classes (the out-of-core pool, the loaded model, the cache), so it imports nothing
above itself and a plugin sees only what it may rely on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np
    import polars as pl


class Rows(Protocol):
    """A target, one shard of the pool, or rows taken from it: ids, texts and the original fields."""

    name: str

    def __len__(self) -> int: ...

    @property
    def ids(self) -> pl.Series: ...

    @property
    def texts(self) -> list[str]: ...

    @property
    def rows(self) -> pl.DataFrame: ...

    @property
    def columns(self) -> list[str]: ...

    def column(self, name: str) -> pl.Series: ...

    @property
    def token_counts(self) -> np.ndarray: ...

    def slice(self, lo: int, hi: int) -> Rows:
        """Rows [lo, hi)."""
        ...


class Pool(Rows, Protocol):
    """The whole candidate pool, out of core: per-row facts for every row (`keys`: a stable uint64
    per id; `usable`: rows with a text), and the rows themselves one shard at a time."""

    @property
    def keys(self) -> np.ndarray: ...

    @property
    def usable(self) -> np.ndarray: ...

    @property
    def shard_ranges(self) -> list[tuple[int, int]]: ...

    def shard(self, index: int) -> Rows: ...

    def take(self, rows: np.ndarray) -> Rows:
        """Rows by pool index, in the order given (reading only the shards that hold them)."""
        ...


class Source(Protocol):
    """A data source as the planner resolved it (before reading): what keys and estimates need."""

    name: str
    files: tuple[Path, ...]
    fingerprint: str
    shard_rows: int


class Model(Protocol):
    """A loaded model, from `PassContext.model`: the torch module and tokenizer, where it runs, the
    one truncation length, its folder's pooling, and the batch sizes its memory allows."""

    spec: Any  # the recipe's ModelSpec (kind, dtype, lora, warmup, ...)
    model: Any
    tokenizer: Any
    device: str
    max_length: int
    pooling: str | None

    def activation_budget(self) -> tuple[int, int]:
        """(bytes one batch's activations may take, most padded tokens a batch may hold)."""
        ...

    def batch_tokens(self, budget: int | None = None, *, backward: bool = False,
                     hidden_states: bool = False) -> int:
        """Padded tokens per batch that fit `budget` bytes (default: the whole activation budget)."""
        ...


class Shards(Protocol):
    """A cache entry made of shards, each written atomically and verified when read."""

    count: int

    def missing(self) -> list[int]: ...

    def done(self, index: int) -> bool: ...

    def complete(self) -> bool: ...

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> None: ...

    def read(self, index: int, mmap: bool = False) -> dict[str, np.ndarray] | None:
        """A shard's arrays (checksums verified); `mmap`: memory-mapped read-only, never loaded whole."""
        ...

    def read_all(self, indices: Sequence[int] | None = None, mmap: bool = False) -> list[dict[str, np.ndarray]]: ...

    def open(self, index: int) -> Path | None:
        """A verified shard folder (for shards that are folders of files), or None."""
        ...

    def stage(self, index: int) -> Any:
        """A staging folder that becomes shard `index` on `commit()` (for shards that are folders)."""
        ...

    def finish(self, **meta: Any) -> None: ...


class StepStore(Protocol):
    """The cache entries of one planned step: arrays (`part` names a further entry of the step),
    or shards. Keys, kinds and atomic writes are the executor's business."""

    def has(self, part: str = "") -> bool: ...

    def write(self, arrays: dict[str, np.ndarray], part: str = "", **meta: Any) -> None: ...

    def read(self, part: str = "") -> dict[str, np.ndarray] | None: ...

    def shards(self, count: int, part: str = "", **meta: Any) -> Shards: ...
