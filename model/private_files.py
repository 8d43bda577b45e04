"""Files only this user may read: the daemon's API key and its saved latent cache.

Both default to the daemon's 0700 runtime folder, but `--socket` and `--persist` may put them
anywhere, /tmp included, where another user could plant a link or a file at the name about to
be written, or a file about to be read. So, as OpenSSH does for its own files:
- `write_private` writes a temporary file opened with O_CREAT | O_EXCL | O_NOFOLLOW and mode
  0600 (a stale one is removed first only when it is a regular file of ours; anything else is
  refused), syncs it and renames it over the file;
- `unsafe_folder` refuses a folder that other users can write (group- or world-writable, the
  sticky bit notwithstanding: it stops them from replacing our files, not from planting theirs)
  or that someone other than this user or root owns;
- `read_private` reads, without following a link, only a regular file of ours that no one
  else can read or write.
Imports no torch.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def partial_path(path: Path) -> Path:
    """Where `write_private` writes before renaming."""
    return Path(path).with_name(Path(path).name + ".partial")


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, readable by this user only (0600), atomically.
    PermissionError, one sentence, when something not ours lies at the temporary name."""
    partial = partial_path(path)
    try:
        found = os.lstat(partial)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
            raise PermissionError(f"{partial} is in the way and is not a file of this user; it was left alone.")
        partial.unlink()            # ours, left by a write that was interrupted
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def unsafe_folder(folder: Path) -> str | None:
    """Why other users could plant or swap files in `folder` (one sentence), or None."""
    try:
        info = os.stat(folder)
    except OSError as e:
        return f"The folder {folder} cannot be read ({e.strerror or e})."
    if info.st_uid not in (os.geteuid(), 0):
        return f"The folder {folder} belongs to another user."
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"The folder {folder} can be written by other users (mode {stat.S_IMODE(info.st_mode):04o})."
    return None


def read_private(path: Path) -> bytes:
    """The bytes of a regular file of this user's that no one else can read or write;
    PermissionError, one sentence, for any other file (a link included)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)   # O_NONBLOCK: a FIFO cannot hang us
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PermissionError(f"{path} is a symbolic link.") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise PermissionError(f"{path} is not a file of this user.")
        if info.st_mode & 0o077:
            raise PermissionError(f"{path} can be read or written by other users "
                                  f"(mode {stat.S_IMODE(info.st_mode):04o}).")
        return handle.read()
