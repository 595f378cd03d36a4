"""A cache in object storage (`--cache-dir s3://...`), kept behind a local read-through folder.

Object stores have no rename, so an entry cannot appear whole the way a local one does. Instead
every committed local entry is published under a prefix of its own writer
(`<entry>/<writer-id>/<files>`), and then a marker object `<entry>/_COMMITTED.json` naming that
writer and its files is written last. A reader that finds no marker sees no entry; a marker
always names a complete set of files, so two writers racing for one key are both safe (the last
marker wins, and both sets are whole). A reader pulls an entry into the local folder the first
time it asks for it; checksums (meta.json) are then verified locally as for any entry. A killed
run resumes from whatever shards were published, on this machine or any other.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from selectkit.storage.objects import ObjectError, ObjectPath

MARKER = "_COMMITTED.json"
META = "meta.json"


class Mirror:
    """Entries of a local cache folder mirrored to an object-storage prefix (see the module docstring)."""

    def __init__(self, url: str | ObjectPath, local_root: Path):
        self.remote = ObjectPath(url)
        self.local_root = local_root

    def _rel(self, folder: Path) -> str:
        return folder.relative_to(self.local_root).as_posix()

    def check(self) -> None:
        """Prove the prefix takes an object (a missing bucket or a denied write is said now, in one line)."""
        probe = self.remote / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.delete()

    def publish(self, folder: Path, only: list[str] | None = None) -> None:
        """Upload a committed local entry (or just `only` of its files), then its marker, last."""
        base = self.remote / self._rel(folder)
        writer = uuid.uuid4().hex
        names = only if only is not None else sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            and not p.relative_to(folder).parts[0].startswith("shard-"))
        files = {}
        for name in names:
            (base / writer / name).upload(folder / name)
            files[name] = (folder / name).stat().st_size
        (base / MARKER).write_text(json.dumps({"writer": writer, "files": files}, sort_keys=True))

    def pull(self, folder: Path) -> bool:
        """Bring a committed remote entry into `folder` (meta.json placed last); False when there is none."""
        base = self.remote / self._rel(folder)
        try:
            marker = json.loads((base / MARKER).read_bytes())
        except ObjectError as exc:
            if exc.message.endswith("no such object"):
                return False
            raise
        except ValueError:
            return False
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".pull-{folder.name}-", dir=folder.parent))
        try:
            for name, size in marker["files"].items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    (base / marker["writer"] / name).download(target)
                except ObjectError as exc:
                    if exc.message.endswith("no such object"):  # a pruned set: treat the entry as absent
                        return False
                    raise
                if target.stat().st_size != size:
                    return False
            if not folder.exists():
                try:
                    os.rename(tmp, folder)
                    return True
                except OSError:
                    pass  # another reader placed it first
            folder.mkdir(parents=True, exist_ok=True)
            names = sorted(marker["files"], key=lambda n: n == META)  # meta.json last: it makes the entry
            for name in names:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / name, folder / name)
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
