"""Feature kinds, canonical requests, atomic shard files and the FeatureStore read API.

Numpy only: reading features back never imports torch.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selectkit.components import FeatureRequest
from selectkit.errors import SelectkitError

# kind -> its settings with their defaults. Settings not listed here are errors.
KINDS: dict[str, dict[str, Any]] = {
    # per example, the log-prob of every counted token (ragged); causal LMs
    "token_logprobs": {"response": None},
    # per example, mean negative log-likelihood of the counted tokens; causal LMs
    "loss": {"response": None},
    # per example, mean over counted tokens of ||softmax(logits) - onehot(next token)||_2; causal LMs
    "el2n": {"response": None},
    # per example, pooled last hidden state (N, D); any model kind
    "embedding": {"pooling": "auto", "normalize": True},
}
LM_KINDS = frozenset({"token_logprobs", "loss", "el2n"})
POOLINGS = ("auto", "mean", "cls", "last")
RAGGED = frozenset({"token_logprobs"})
FEATURES_VERSION = "1"  # enters shard keys: bump when a kind's computation changes


def feature_request(kind: str, data: str = "pool", **settings: Any) -> FeatureRequest:
    """The canonical request for `kind` over `data` (defaults filled in, None dropped, sorted)."""
    if kind not in KINDS:
        raise SelectkitError(f"unknown feature kind {kind!r} (known: {', '.join(KINDS)})")
    unknown = set(settings) - set(KINDS[kind])
    if unknown:
        raise SelectkitError(f"feature {kind!r} has no setting {sorted(unknown)[0]!r} "
                             f"(settings: {', '.join(KINDS[kind]) or 'none'})")
    merged = {**KINDS[kind], **settings}
    if kind == "embedding" and merged["pooling"] not in POOLINGS:
        raise SelectkitError(f"embedding pooling {merged['pooling']!r} is not one of {', '.join(POOLINGS)}")
    return FeatureRequest(kind, data, tuple(sorted((k, v) for k, v in merged.items() if v is not None)))


def canonical(request: FeatureRequest) -> FeatureRequest:
    """Normalise a request so equal features compare equal whatever defaults a scorer spelled out."""
    return feature_request(request.kind, request.data, **dict(request.settings))


def describe(request: FeatureRequest) -> str:
    settings = ",".join(f"{k}={v}" for k, v in request.settings)
    return f"{request.kind}[{request.data}]" + (f"({settings})" if settings else "")


@dataclass
class PassStats:
    """What a model pass did; tests read `forward_passes` to check fusion."""

    forward_passes: int = 0
    batches: int = 0
    examples: int = 0
    tokens: int = 0  # real tokens fed to the model
    padded_tokens: int = 0  # tokens including padding (batch rows x longest row)
    shards_computed: int = 0
    shards_reused: int = 0
    model_loaded: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- shards


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.npz"


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write one shard atomically: a temp file in the same folder, fsync, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_shard(path: Path) -> dict[str, np.ndarray] | None:
    """A complete shard's arrays, or None when it is missing or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def shard_complete(path: Path) -> bool:
    """True when a shard file exists and its zip directory reads (cheap: no arrays loaded)."""
    if not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def clean_temp_files(folder: Path) -> None:
    """Remove temp files a killed run left behind (never complete shards, nor a live process's)."""
    for tmp in folder.glob(".shard-*.npz.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def pack(request: FeatureRequest, values: Any, slot: str) -> dict[str, np.ndarray]:
    """Arrays of one feature in a shard: ragged kinds as values + offsets."""
    if request.kind in RAGGED:
        lengths = np.array([len(v) for v in values], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate(values).astype(np.float32) if len(values) else np.zeros(0, np.float32)
        return {f"{slot}_values": flat, f"{slot}_offsets": offsets}
    return {slot: np.asarray(values)}


@dataclass
class DataPart:
    """The shards of one data source's pass: which slot in the shard files holds which feature."""

    data: str
    folder: Path
    size: int
    shard_size: int
    slots: dict[FeatureRequest, str]
    cached: dict[str, Any] = field(default_factory=dict)

    @property
    def shards(self) -> int:
        return max(1, -(-self.size // self.shard_size))

    def load(self, slot: str, ragged: bool) -> Any:
        if slot in self.cached:
            return self.cached[slot]
        parts = []
        for i in range(self.shards):
            arrays = read_shard(shard_path(self.folder, i))
            if arrays is None:
                raise SelectkitError(f"feature shard {shard_path(self.folder, i)} is missing; rerun the pass")
            parts.append(arrays)
        if ragged:
            values = np.concatenate([p[f"{slot}_values"] for p in parts])
            bounds, start = [], 0
            for p in parts:
                offs = p[f"{slot}_offsets"]
                bounds.append(offs[:-1] + start)
                start += int(offs[-1])
            starts = np.concatenate(bounds)
            ends = np.append(starts[1:], start)
            result: Any = [values[a:b] for a, b in zip(starts, ends)]
        else:
            result = np.concatenate([p[slot] for p in parts])
        self.cached[slot] = result
        return result


class FeatureStore:
    """Per-example features of one model's pass, read back lazily from its shards.

    `get(kind, data, **settings)` returns, in the data source's row order: a list of float32
    arrays for ragged kinds (token_logprobs), (N,) float64 for loss and el2n, (N, D) float32
    for embedding. Settings not given take the kind's defaults (see KINDS).
    """

    def __init__(self, model: str, parts: dict[str, DataPart], stats: PassStats):
        self.model = model
        self.parts = parts
        self.stats = stats

    @property
    def requests(self) -> list[FeatureRequest]:
        return [r for part in self.parts.values() for r in part.slots]

    def has(self, kind: str, data: str = "pool", **settings: Any) -> bool:
        part = self.parts.get(data)
        return part is not None and feature_request(kind, data, **settings) in part.slots

    def get(self, kind: str, data: str = "pool", **settings: Any) -> Any:
        request = feature_request(kind, data, **settings)
        part = self.parts.get(data)
        if part is None or request not in part.slots:
            known = ", ".join(describe(r) for r in self.requests) or "none"
            raise SelectkitError(f"model {self.model!r}: feature {describe(request)} was not computed "
                                 f"(computed: {known}); the scorer must list it in feature_requests()")
        return part.load(part.slots[request], kind in RAGGED)


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """A human-readable note of what a pass folder holds (written once, atomically)."""
    final = folder / "meta.json"
    if final.is_file():
        return
    tmp = folder / f".meta.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    os.replace(tmp, final)
