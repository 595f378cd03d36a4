"""The content-addressed artifact cache: every step's output is an entry `root/<kind>/<key>/`.

An entry is a folder of files plus `meta.json` holding each file's size and sha256. It is
written into a temporary sibling and renamed into place, so it is complete or absent; when
several writers race for one key the first complete rename wins and the others discard theirs.
A read checks every checksum: a truncated or altered entry is reported as a warning, removed
and computed again, never read as data. Sharded entries (model passes, score shards) hold one
such sub-entry per shard, so a killed run keeps every finished shard. Files follow the umask,
so a team can share a cache folder through a group; since others can write there, the cache never
follows a symbolic link below its root for a write, a touch or a delete (`storage/nofollow.py`): a
link where an entry, a shard or a file of one belongs is reported, the link itself removed (never
its target) and the entry computed again; `prune` removes such links. A cache in object storage
(`--cache-dir s3://bucket/prefix`) is a local folder that publishes each committed entry to the
bucket and pulls entries it lacks from there (selectkit.storage.mirror).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectkit.errors import SelectkitError, SelectkitWarning
from selectkit.storage import nofollow
from selectkit.storage.digest import sha256_file

META = "meta.json"
USED = ".used"  # touched on every read: `cache list` shows it as the last use
CACHE_ENV = "SELECTKIT_CACHE_DIR"


def jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays in diagnostics."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def default_cache_dir() -> Path:
    """$SELECTKIT_CACHE_DIR, else $XDG_CACHE_HOME/selectkit, else ~/.cache/selectkit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "selectkit"


def mirror_folder(url: str) -> Path:
    """The local folder in front of a cache in object storage: $SELECTKIT_CACHE_MIRROR, else a folder
    per URL under the default cache folder (each machine keeps its own)."""
    import hashlib

    if os.environ.get("SELECTKIT_CACHE_MIRROR"):
        return Path(os.environ["SELECTKIT_CACHE_MIRROR"]).expanduser()
    return default_cache_dir() / "mirrors" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class CacheError(SelectkitError):
    """The cache folder cannot be created or written."""


class MissingShardError(CacheError):
    """A shard a complete entry should hold is gone (found corrupt and removed): compute it again."""


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share(path: Path, folder: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the mode the umask allows."""
    try:
        os.chmod(path, (0o777 if folder else 0o666) & ~umask())
    except OSError:  # pragma: no cover - a file system without modes
        pass


def write_bytes_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as an .npz written straight to the file (no in-memory copy of a 10M-row score; no
    pickled objects: object arrays are refused when read)."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class _ThroughWrite:
    """A file numpy writes through Python's `write`: a full disk then raises OSError with its errno
    (ENOSPC), where numpy's own `tofile` says only "N requested and M written"."""

    def __init__(self, handle: Any):
        self.handle = handle

    def write(self, data: bytes) -> int:
        return self.handle.write(data)


def save_npy(path: Path, array: np.ndarray) -> None:
    """One array as a .npy file (no pickled objects)."""
    with open(path, "wb") as handle:
        np.save(_ThroughWrite(handle), np.asarray(array), allow_pickle=False)


def array_file(i: int) -> str:
    """The file of the i-th array of a shard (`meta.json` lists the arrays' names in order)."""
    return f"a{i:03d}.npy"


def read_shard_arrays(folder: Path, mmap: bool = False) -> dict[str, np.ndarray]:
    """A verified shard's arrays, by name in the order written: one .npy file each, opened
    memory-mapped with `mmap` (read-only pages, never copied into the process); shards an older
    selectkit wrote as one arrays.npz are read whole."""
    names = json.loads((folder / META).read_text(encoding="utf-8")).get("arrays")
    if names is None:
        return read_npz(folder / "arrays.npz")
    return {name: np.load(folder / array_file(i), mmap_mode="r" if mmap else None, allow_pickle=False)
            for i, name in enumerate(names)}


Writer = Callable[[Path], None]  # writes one file at the given path


class Staging:
    """A temporary folder that becomes an entry: add files, then `commit` (`on_commit(folder)` then
    runs, e.g. to publish the entry to object storage)."""

    def __init__(self, final: Path, meta: dict, on_commit: Callable[[Path], None] | None = None):
        self.final = final
        self.on_commit = on_commit
        final.parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        share(self.folder, folder=True)
        self.meta = dict(meta)

    def path(self, name: str) -> Path:
        return self.folder / name

    def add_bytes(self, name: str, data: bytes) -> None:
        write_bytes_synced(self.folder / name, data)
        share(self.folder / name)

    def add_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        self.add_file(name, lambda path: write_npz(path, arrays))

    def add_array_files(self, arrays: dict[str, np.ndarray]) -> None:
        """Each array as a .npy file of its own (memory-mappable when read back), names in meta.json."""
        for i, array in enumerate(arrays.values()):
            self.add_file(array_file(i), lambda path, a=array: save_npy(path, a))
        self.meta["arrays"] = list(arrays)

    def add_file(self, name: str, write: Writer) -> None:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        share(path)

    def add_folder(self, name: str, source: Path) -> None:
        """Move a finished folder (e.g. saved with save_pretrained) into the entry."""
        os.replace(source, self.folder / name)

    def commit(self) -> bool:
        """Seal checksums and rename into place; False when another writer got there first."""
        files = {}
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            name = path.relative_to(self.folder).as_posix()
            files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
            share(path)
        for path in self.folder.rglob("*"):
            if path.is_dir():
                share(path, folder=True)
        meta = {**self.meta, "files": files, "created": round(time.time(), 3)}
        write_bytes_synced(self.folder / META, json.dumps(meta, sort_keys=True, indent=1,
                                                           default=jsonable).encode())
        share(self.folder / META)
        if os.path.islink(self.final):  # renaming onto it would fail with "not a directory"
            drop_link(self.final)
        try:
            os.rename(self.folder, self.final)
        except OSError as exc:
            shutil.rmtree(self.folder, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and self.final.is_dir():
                return False  # a concurrent writer won; its content is the same by construction
            raise
        if self.on_commit is not None:
            self.on_commit(self.final)
        return True

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None or self.folder.exists():
            self.discard()


def verify(folder: Path) -> dict | None:
    """The entry's meta when every file matches its recorded size and checksum, else None."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        files = meta["files"]
        for name, info in files.items():
            path = folder / name
            if path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def checked(folder: Path, problem: str) -> Path | None:
    """`folder` when it holds a verified entry; None when it holds none. A corrupt entry is reported
    (`problem`), removed and treated as absent, so the caller computes it again. An entry verified
    earlier in this process is not hashed again while none of its files changed (a streamed score
    reads each shard of a large gradient store several times). An entry holding a symbolic link is
    reported and removed (the link, never its target) the same way."""
    links = nofollow.scan(folder)[1]
    if links:
        _VERIFIED.pop(str(folder), None)
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        warnings.warn(f"cache: {links[0]}{more} is a symbolic link, never followed; removed {folder} "
                      "(the link, not its target) and computing it again", SelectkitWarning, stacklevel=3)
        remove(folder)
        return None
    if not (folder / META).is_file():
        return None
    state = _state(folder)
    if state is not None and _VERIFIED.get(str(folder)) == state:
        return folder
    if verify(folder) is None:
        _VERIFIED.pop(str(folder), None)
        warnings.warn(f"{problem}; computing it again", SelectkitWarning, stacklevel=3)
        remove(folder)
        return None
    if state is not None:
        if len(_VERIFIED) > 100_000:
            _VERIFIED.clear()
        _VERIFIED[str(folder)] = state
    return folder


_VERIFIED: dict[str, tuple] = {}  # folder -> the state of its files when their checksums last held


def _state(folder: Path) -> tuple | None:
    """(path, size, mtime, inode, ctime) of every file of an entry: a change to any file changes it."""
    found = []
    try:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if not name.startswith("."):
                    st = os.lstat(os.path.join(root, name))
                    found.append((os.path.join(root, name), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    except OSError:
        return None
    return tuple(sorted(found))


def remove(folder: Path) -> None:
    """Remove an entry so that readers never see half of it: rename away first. An entry that is a
    symbolic link loses the link, never its target."""
    if os.path.islink(folder):
        nofollow.rmtree(folder)
        return
    trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:  # a file entry (frames/)
        trash.unlink(missing_ok=True)


def drop_link(path: Path) -> None:
    """A symbolic link where the cache keeps an entry, a shard or a kind of entries: reported (one
    line naming it), and the link itself removed, so what comes next writes a real folder inside
    the cache."""
    warnings.warn(f"cache: {path} is a symbolic link, never followed; removed the link (not its target) "
                  "and computing the entry again", SelectkitWarning, stacklevel=3)
    nofollow.rmtree(path)
    if os.path.islink(path):
        raise CacheError(f"cache: {path} is a symbolic link and cannot be removed; remove it by hand")


FRAMES = "frames"  # the kind whose entries are files: in-memory tables as Parquet (selectkit.data.frames)


@dataclass(frozen=True)
class EntryInfo:
    kind: str
    key: str  # "" for a whole kind folder that is a symbolic link
    bytes: int
    label: str
    last_used: float | None
    link: bool = False  # the entry is, or holds, a symbolic link: `prune` always removes it


class Cache:
    """Entries under `root/<kind>/<key>/`; see the module docstring for the guarantees."""

    def __init__(self, root: Path | str | None = None):
        from selectkit.storage.objects import is_url

        self.mirror = None
        if root is not None and is_url(root):
            from selectkit.storage.mirror import Mirror

            self.mirror = Mirror(str(root) if isinstance(root, str) else root.url, mirror_folder(str(root)))
            self.root = self.mirror.local_root
        else:
            self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    @property
    def location(self) -> str:
        """Where the cache lives: the local folder, or the object-storage URL it mirrors."""
        return str(self.mirror.remote) if self.mirror is not None else str(self.root)

    def __reduce__(self):  # a cache travels as its location: a worker elsewhere makes its own local mirror
        return (Cache, (self.mirror.remote.url if self.mirror is not None else self.root,))

    def pull(self, folder: Path) -> bool:
        """True when `folder` holds a committed entry (never through a link), pulling it from object
        storage when the cache has one."""
        if nofollow.plain_file(self.root, folder / META):
            return True
        return self.mirror is not None and self.mirror.pull(self.unlinked(folder))

    def published(self, folder: Path, only: list[str] | None = None) -> None:
        if self.mirror is not None:
            self.mirror.publish(folder, only)

    # ------------------------------------------------------------ setup
    def ensure_writable(self) -> None:
        """Create the root (or say clearly why it cannot be), then prove it takes a file."""
        where = f"the cache folder {self.root} (set {CACHE_ENV} to choose another)"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = Path(tempfile.mkstemp(prefix=".probe-", dir=self.root)[1])
            probe.unlink()
        except FileExistsError:
            raise CacheError(f"cannot use {where}: a file of that name exists") from None
        except NotADirectoryError:
            raise CacheError(f"cannot use {where}: part of the path is a file, not a folder") from None
        except PermissionError:
            raise CacheError(f"cannot use {where}: permission denied") from None
        except OSError as exc:
            raise CacheError(f"cannot use {where}: {exc.strerror or exc}") from None
        if self.mirror is not None:
            self.mirror.check()

    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def unlinked(self, path: Path) -> Path:
        """`path` (an entry or shard folder under the root) once no folder on the way to it is a
        symbolic link: each one found is reported and the link removed. Call before writing."""
        while (link := nofollow.first_link(self.root, path)) is not None:
            drop_link(link)
        return path

    # ------------------------------------------------------------ plain entries
    def has(self, kind: str, key: str) -> bool:
        """Cheap presence check (checksums are verified when the entry is read); a link is absent."""
        return self.pull(self.folder(kind, key))

    def stage(self, kind: str, key: str, **meta: Any) -> Staging:
        return Staging(self.unlinked(self.folder(kind, key)), {"kind": kind, "key": key, **meta}, self.published)

    def open(self, kind: str, key: str) -> Path | None:
        """The entry's folder after verifying it; None when absent. A corrupt entry is reported,
        removed and treated as absent, so the caller computes it again."""
        self.pull(self.folder(kind, key))
        folder = checked(self.unlinked(self.folder(kind, key)), f"cache entry {kind}/{key} is corrupt or incomplete")
        if folder is not None:
            self.touch(folder)
        return folder

    def touch(self, folder: Path) -> None:
        try:
            nofollow.touch(folder / USED)
        except OSError:  # a read-only shared cache still reads; a link there is never followed
            pass

    def write_arrays(self, kind: str, key: str, arrays: dict[str, np.ndarray], **meta: Any) -> None:
        with self.stage(kind, key, **meta) as staging:
            staging.add_arrays("arrays.npz", arrays)
            staging.commit()

    def read_arrays(self, kind: str, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        folder = self.open(kind, key)
        if folder is None:
            return None
        meta = json.loads((folder / META).read_text())
        try:
            return read_npz(folder / "arrays.npz"), meta
        except (OSError, ValueError, EOFError) as exc:  # checksums matched, yet unreadable: someone else's bytes
            warnings.warn(f"cache entry {kind}/{key} is unreadable ({exc}); computing it again", SelectkitWarning,
                          stacklevel=2)
            remove(folder)
            return None

    # ------------------------------------------------------------ sharded entries
    def sharded(self, kind: str, key: str, shards: int, **meta: Any) -> Sharded:
        return Sharded(self, kind, key, shards, meta)

    def store(self, kind: str, key: str) -> StepEntries:
        """The entries of one step (what a pass provider writes and reads: contract.protocols.StepStore)."""
        return StepEntries(self, kind, key)

    # ------------------------------------------------------------ maintenance
    def entries(self) -> list[EntryInfo]:
        """Every complete entry (kind, key, size, label, last use), sorted by kind and key."""
        found: list[EntryInfo] = []
        if not self.root.is_dir():
            return found
        for kind_dir in sorted(p for p in self.root.iterdir() if not p.name.startswith(".")):
            if kind_dir.is_symlink():
                found.append(_link_info(kind_dir, kind_dir.name, ""))
                continue
            if not kind_dir.is_dir():
                continue
            for folder in sorted(p for p in kind_dir.iterdir() if not p.name.startswith(".")):
                if folder.is_symlink():
                    found.append(_link_info(folder, kind_dir.name, folder.name))
                    continue
                if kind_dir.name == FRAMES and folder.is_file():  # an in-memory table's Parquet file
                    stat = folder.lstat()
                    found.append(EntryInfo(FRAMES, folder.name, stat.st_size, "(in-memory table)", stat.st_mtime))
                    continue
                if not folder.is_dir():
                    continue
                size, links = nofollow.scan(folder)
                if links:
                    found.append(EntryInfo(kind_dir.name, folder.name, size,
                                           f"(damaged: {links[0].relative_to(folder)} is a symbolic link)",
                                           folder.lstat().st_mtime, link=True))
                    continue
                if (folder / META).is_file():
                    try:
                        label = str(json.loads((folder / META).read_text()).get("label", ""))
                    except (OSError, ValueError):
                        label = "(unreadable meta.json)"
                elif any(folder.glob("shard-*")):
                    label = "(incomplete: some shards)"
                else:
                    continue
                used = folder / USED
                stamp = used if used.exists() else folder
                found.append(EntryInfo(kind_dir.name, folder.name, size, label, stamp.lstat().st_mtime))
        return found

    def prune(self, keep: set[str] | None = None) -> int:
        """Delete every entry whose key is not in `keep` (all when None), and leftovers of
        killed writers; returns bytes freed. An entry `<key>-<part>` belongs to step `<key>`."""
        freed = 0
        for entry in self.entries():
            if entry.link and not entry.key:  # a kind folder that is a link: the link goes
                nofollow.rmtree(self.root / entry.kind)
            elif entry.link or keep is None or entry.key.split("-", 1)[0] not in keep:
                remove(self.folder(entry.kind, entry.key))
                freed += entry.bytes
        if self.root.is_dir():
            for kind_dir in (p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()):
                for stale in kind_dir.glob(".t*-*"):
                    if _stale(stale):
                        nofollow.rmtree(stale)
        return freed


def _link_info(path: Path, kind: str, key: str) -> EntryInfo:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return EntryInfo(kind, key, 0, f"(symbolic link to {target}: never followed)", path.lstat().st_mtime, link=True)


def _stale(path: Path, age: float = 3600.0) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > age
    except OSError:
        return False


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


class Sharded:
    """An entry made of shards, each a verified sub-entry `shard-NNNNN/`; `meta.json` of the
    entry itself is written once all shards are in (`finish`), so `Cache.has` means complete."""

    def __init__(self, cache: Cache, kind: str, key: str, shards: int, meta: dict):
        self.cache, self.kind, self.key, self.count = cache, kind, key, int(shards)
        self.folder = cache.folder(kind, key)
        self.meta = {"kind": kind, "key": key, "shards": self.count, **meta}

    def shard_folder(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}"

    def done(self, index: int) -> bool:
        return self.cache.pull(self.shard_folder(index))

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if not self.done(i)]

    def complete(self) -> bool:
        return self.cache.pull(self.folder)

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Shard `index` as one .npy file per array (so a reader can memory-map them), atomically."""
        self.cache.unlinked(self.shard_folder(index))
        self.folder.mkdir(parents=True, exist_ok=True)
        with Staging(self.shard_folder(index), {"shard": index}, self.cache.published) as staging:
            staging.add_array_files(arrays)
            staging.commit()

    def adopt(self, index: int, source: Path) -> None:
        """Shard `index` made of `source`, a verified shard of another entry holding the same arrays (hard
        links where the file system allows, else copies), checksummed again as it commits: work done
        under one key reused under another without computing it again (the Trainer callback's store)."""
        meta = json.loads((source / META).read_text(encoding="utf-8"))
        self.cache.unlinked(self.shard_folder(index))
        self.folder.mkdir(parents=True, exist_ok=True)
        with Staging(self.shard_folder(index), {"shard": index}, self.cache.published) as staging:
            for name in meta["files"]:
                staging.add_file(name, lambda path, name=name: _link_or_copy(source / name, path))
            if "arrays" in meta:
                staging.meta["arrays"] = meta["arrays"]
            staging.commit()

    def stage(self, index: int) -> Staging:
        """For shards that are folders of files (e.g. checkpoints): add files, then commit."""
        self.cache.unlinked(self.shard_folder(index))
        self.folder.mkdir(parents=True, exist_ok=True)
        return Staging(self.shard_folder(index), {"shard": index}, self.cache.published)

    def open(self, index: int) -> Path | None:
        """A verified shard folder, or None (a corrupt shard is reported and removed)."""
        self.cache.pull(self.shard_folder(index))
        folder = checked(self.cache.unlinked(self.shard_folder(index)),
                         f"shard {index} of cache entry {self.kind}/{self.key} is corrupt")
        if folder is None and self.complete() and not (self.shard_folder(index) / META).is_file():
            (self.folder / META).unlink(missing_ok=True)  # a shard was removed: the entry is no longer whole
        return folder

    def read(self, index: int, mmap: bool = False) -> dict[str, np.ndarray] | None:
        """Shard `index`'s arrays after verifying its checksums (None when absent or corrupt);
        `mmap`: memory-mapped, read-only, so a pass's features never need to fit in memory."""
        folder = self.open(index)
        if folder is None:
            return None
        try:
            return read_shard_arrays(folder, mmap)
        except (OSError, ValueError, EOFError, KeyError):
            remove(folder)
            return None

    def finish(self, **meta: Any) -> None:
        """Mark the entry complete (every shard verified present)."""
        if self.missing():
            raise SelectkitError(f"cache entry {self.kind}/{self.key} has missing shards {self.missing()[:5]}")
        body = {**self.meta, **meta, "created": round(time.time(), 3)}
        final = self.cache.unlinked(self.folder / META)
        tmp = self.folder / f".meta-{uuid.uuid4().hex[:8]}"
        write_bytes_synced(tmp, json.dumps(body, sort_keys=True, indent=1, default=jsonable).encode())
        share(tmp)
        os.replace(tmp, final)
        self.cache.published(self.folder, [META])
        self.cache.touch(self.folder)

    def meta_of_finished(self) -> dict | None:
        try:
            return json.loads((self.folder / META).read_text())
        except (OSError, ValueError):
            return None

    def scrub(self) -> list[int]:
        """Verify every shard present (each corrupt one is reported and removed); the shards now missing."""
        return [i for i in range(self.count) if self.open(i) is None]

    def verified(self) -> bool:
        """True when complete and every shard's checksums hold (each corrupt shard is removed)."""
        if not self.complete():
            return False
        return all(self.open(i) is not None for i in range(self.count))

    def read_all(self, indices: Iterable[int] | None = None, mmap: bool = False) -> list[dict[str, np.ndarray]]:
        out = []
        for i in range(self.count) if indices is None else indices:
            arrays = self.read(i, mmap)
            if arrays is None:
                raise MissingShardError(f"shard {i} of cache entry {self.kind}/{self.key} is missing or corrupt; "
                                        "run the recipe again to recompute it")
            out.append(arrays)
        return out


class StepEntries:
    """The cache entries of one step: `<kind>/<key>` and its parts `<kind>/<key>-<part>` (which
    `prune` keeps with the step), as arrays or shards."""

    def __init__(self, cache: Cache, kind: str, key: str):
        self.cache, self.kind, self.key = cache, kind, key

    def _key(self, part: str) -> str:
        return f"{self.key}-{part}" if part else self.key

    def has(self, part: str = "") -> bool:
        return self.cache.has(self.kind, self._key(part))

    def write(self, arrays: dict[str, np.ndarray], part: str = "", **meta: Any) -> None:
        self.cache.write_arrays(self.kind, self._key(part), arrays, **meta)

    def read(self, part: str = "") -> dict[str, np.ndarray] | None:
        got = self.cache.read_arrays(self.kind, self._key(part))
        return None if got is None else got[0]

    def shards(self, count: int, part: str = "", **meta: Any) -> Sharded:
        return self.cache.sharded(self.kind, self._key(part), count, **meta)
