"""Content-addressed artifact cache: a key is a hash of an artifact's inputs' keys, its
component's name and version, and its params. Writes are atomic (temp folder + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from selectkit.components import Score, Selection, Shape


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays in diagnostics."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def default_cache_dir() -> Path:
    """$SELECTKIT_CACHE_DIR, else $XDG_CACHE_HOME/selectkit, else ~/.cache/selectkit."""
    if os.environ.get("SELECTKIT_CACHE_DIR"):
        return Path(os.environ["SELECTKIT_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "selectkit"


class Cache:
    """Artifacts under `root/<kind>/<key>/`, each folder complete or absent."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        return (self.folder(kind, key) / "meta.json").is_file()

    def _write(self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        final = self.folder(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, default=jsonable))
            if final.exists():  # a concurrent writer won; identical content by construction
                shutil.rmtree(tmp)
                return
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _read(self, kind: str, key: str) -> tuple[dict[str, np.ndarray], dict]:
        folder = self.folder(kind, key)
        meta = json.loads((folder / "meta.json").read_text())
        with np.load(folder / "arrays.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return arrays, meta

    # scores -----------------------------------------------------------------
    def save_score(self, key: str, score: Score) -> None:
        arrays = {"values": score.values}
        arrays.update({f"target:{t}": v for t, v in score.target_features.items()})
        meta = {"shape": score.shape.value, "higher_is_better": score.higher_is_better,
                "columns": list(score.columns), "tasks": list(score.tasks),
                "targets": list(score.target_features)}
        self._write("scores", key, arrays, meta)

    def load_score(self, key: str) -> Score:
        arrays, meta = self._read("scores", key)
        return Score(values=arrays["values"], shape=Shape(meta["shape"]), higher_is_better=meta["higher_is_better"],
                     columns=tuple(meta["columns"]), tasks=tuple(meta["tasks"]),
                     target_features={t: arrays[f"target:{t}"] for t in meta["targets"]})

    # selections -------------------------------------------------------------
    def save_selection(self, key: str, selection: Selection) -> None:
        arrays = {"indices": np.asarray(selection.indices, dtype=np.int64)}
        if selection.weights is not None:
            arrays["weights"] = np.asarray(selection.weights, dtype=np.float64)
        if selection.counts is not None:
            arrays["counts"] = np.asarray(selection.counts, dtype=np.int64)
        self._write("selections", key, arrays, {"diagnostics": selection.diagnostics})

    def load_selection(self, key: str) -> Selection:
        arrays, meta = self._read("selections", key)
        return Selection(indices=arrays["indices"], weights=arrays.get("weights"), counts=arrays.get("counts"),
                         diagnostics=meta.get("diagnostics", {}))

    # maintenance ------------------------------------------------------------
    def entries(self) -> list[tuple[str, str, int]]:
        """(kind, key, bytes) of every complete artifact."""
        found = []
        if not self.root.exists():
            return found
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for folder in sorted(p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                found.append((kind_dir.name, folder.name, size))
        return found

    def prune(self, keep: set[str] | None = None) -> int:
        """Delete every artifact whose key is not in `keep` (all when None); returns bytes freed."""
        freed = 0
        for kind, key, size in self.entries():
            if keep is None or key not in keep:
                shutil.rmtree(self.folder(kind, key), ignore_errors=True)
                freed += size
        return freed
