"""File operations that never follow a symbolic link, for folders other people can write to.

A group-shared cache (run by CI as root, say) is such a folder: a link planted where selectkit
writes, touches or deletes would carry that write or delete to wherever the link points. So every
check here uses `lstat`, the one write that opens a file which may already exist (touching a
marker) opens it with `O_NOFOLLOW` (and `O_NONBLOCK`, so a FIFO never blocks), and removal unlinks
a link itself, never its target. What to do about a link found (report it, recompute the entry)
is the caller's business (`storage/cache.py`).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

_TOUCH_FLAGS = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                | getattr(os, "O_CLOEXEC", 0))


def first_link(root: Path, path: Path) -> Path | None:
    """The first part of `path` below `root` that is a symbolic link, else None. `root` itself (and
    what leads to it) is the user's choice and trusted; `path` must lie under it."""
    here = root
    for part in path.relative_to(root).parts:
        here = here / part
        if os.path.islink(here):
            return here
    return None


def plain_file(root: Path, path: Path) -> bool:
    """`path` is a regular file reached from `root` through no symbolic link."""
    return first_link(root, path) is None and os.path.isfile(path)


def scan(folder: Path) -> tuple[int, list[Path]]:
    """(bytes in the regular files under `folder`, every symbolic link under it, sorted), following
    none; `folder` itself when it is a link."""
    if os.path.islink(folder):
        return 0, [folder]
    size, links, todo = 0, [], [str(folder)]
    while todo:
        try:
            entries = os.scandir(todo.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_symlink():
                        links.append(Path(entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        size += entry.stat(follow_symlinks=False).st_size
                except OSError:  # gone meanwhile
                    continue
    return size, sorted(links)


def touch(path: Path) -> None:
    """Create `path` or update its times. A symbolic link there is never followed: OSError (ELOOP)."""
    fd = os.open(path, _TOUCH_FLAGS, 0o666)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def rmtree(path: Path) -> None:
    """Remove a folder and all in it, or only the link (or file) when `path` is one: never what a
    link points to. (`shutil.rmtree` never follows a link inside the folder; given a link, it
    refuses, so a link is unlinked here.) Errors are left to the caller to notice."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass
