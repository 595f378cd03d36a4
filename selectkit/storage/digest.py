"""Identity of bytes, one copy each: the file digest (sha256, remembered per file state in the
process and, with a memo folder, across runs), the fingerprint of a file or a folder, and the
cache key every step's artifact is stored under. Pure Python: importing it costs nothing."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

BLOCK = 1 << 20  # bytes read at a time


def sha256_file(file: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (always reads: use `file_digest` for a remembered one)."""
    h = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(file: str | Path, memo: Path | None = None, *, whole_below: int | None = None) -> str:
    """The digest of a file as it is now: its sha256, computed once per (path, size, mtime, inode,
    ctime) in this process and, with `memo` (a folder in the cache), once across runs. With
    `whole_below`, a larger file is identified by its size and its first and last MiB instead
    (model weights of many GB; the state key still catches any rewrite of the file)."""
    path = Path(file)
    stat = path.stat()
    state = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    sampled = whole_below is not None and stat.st_size > whole_below
    if memo is None:
        return _remembered(*state, sampled)
    ident = "\x1f".join(map(str, state)) + ("\x1fsampled" if sampled else "")
    token = memo / hashlib.sha256(ident.encode()).hexdigest()[:32]
    try:
        cached = token.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    value = _remembered(*state, sampled)
    try:  # the memo is in a shared cache: never written through a symbolic link planted there
        token.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(token.parent):
            return value
        tmp = token.with_name(f".{token.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # O_EXCL: a link there fails
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        os.replace(tmp, token)
    except OSError:  # a read-only cache only loses the shortcut
        pass
    return value


@lru_cache(maxsize=256)
def _remembered(path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int, sampled: bool) -> str:
    if not sampled:
        return sha256_file(path)
    h = hashlib.sha256(f"sampled\x1f{size}\x1f".encode())
    with open(path, "rb") as handle:
        h.update(handle.read(BLOCK))
        handle.seek(max(0, size - BLOCK))
        h.update(handle.read(BLOCK))
    return h.hexdigest()


def path_fingerprint(path: Path, memo: Path | None = None) -> str:
    """sha256 over a file's digest, or over every file of a folder (relative names and digests); an
    object in a store (selectkit.storage.objects.ObjectPath) by `object_fingerprint` of its metadata."""
    if not isinstance(path, Path) and hasattr(path, "fingerprint"):  # an object in a store (ObjectPath)
        return path.fingerprint()
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file_digest(file, memo).encode())
    return digest.hexdigest()


def cache_key(*parts: Any) -> str:
    """The one cache key: sha256 of the parts as canonical JSON, 32 hex digits."""
    text = json.dumps(parts, sort_keys=True, default=_key_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _key_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    return str(value)


def object_fingerprint(name: str, meta: dict) -> str:
    """The fingerprint of an object in a store, from its metadata alone (never a download): its
    name, ETag (or the store's content hash), version id when versioning is on, and size; the
    last-modified time stands in only where the store gives no ETag."""
    parts = ["object", name, meta.get("etag") or "", meta.get("version") or "", str(meta.get("size")),
             "" if meta.get("etag") else (meta.get("mtime") or "")]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
