"""Resumable shards of per-example features on disk.

A folder holds `meta.json` (what the features are; a run with different settings refuses to
reuse it) and, per shard i (rows [i*shard_size, (i+1)*shard_size)), `shard-0000i.npz` with
`features` (float16 or float32), `norms` and `losses` (float64). Each shard is written to a
temporary name and renamed, so a killed run leaves only complete shards and resumes after them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

Compute = Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]  # (start, stop) -> features, norms, losses


class ShardStore:
    def __init__(self, folder: str | Path, meta: dict, *, n: int, shard_size: int = 1024, dtype: str = "float32"):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"feature dtype must be float16 or float32, got {dtype!r}")
        self.folder = Path(folder)
        self.n, self.shard_size, self.dtype = n, shard_size, dtype
        self.meta = {**meta, "n": n, "shard_size": shard_size, "dtype": dtype}
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_file = self.folder / "meta.json"
        if meta_file.exists():
            old = json.loads(meta_file.read_text())
            if old != json.loads(json.dumps(self.meta)):
                for stale in self.folder.glob("shard-*.npz"):
                    stale.unlink()
        _atomic_write_text(meta_file, json.dumps(self.meta, sort_keys=True, indent=1))

    @property
    def num_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def path(self, i: int) -> Path:
        return self.folder / f"shard-{i:05d}.npz"

    def done(self, i: int) -> bool:
        return self.path(i).exists()

    def fill(self, compute: Compute, progress: Callable[[str], None] | None = None) -> ShardStore:
        """Compute every missing shard (in order); complete ones are skipped."""
        for i in range(self.num_shards):
            if self.done(i):
                continue
            start, stop = i * self.shard_size, min(self.n, (i + 1) * self.shard_size)
            feats, norms, losses = compute(start, stop)
            tmp = self.path(i).with_suffix(".tmp.npz")
            np.savez(tmp, features=np.asarray(feats, dtype=self.dtype), norms=np.asarray(norms, np.float64),
                     losses=np.asarray(losses, np.float64))
            os.replace(tmp, self.path(i))
            if progress:
                progress(f"gradient shard {i + 1}/{self.num_shards}")
        return self

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All rows: features (N, D) in the stored dtype, norms (N,), losses (N,)."""
        missing = [i for i in range(self.num_shards) if not self.done(i)]
        if missing:
            raise RuntimeError(f"{self.folder}: shards {missing[:5]} are not computed yet")
        parts = [np.load(self.path(i)) for i in range(self.num_shards)]
        return tuple(np.concatenate([p[k] for p in parts]) for k in ("features", "norms", "losses"))  # type: ignore[return-value]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
