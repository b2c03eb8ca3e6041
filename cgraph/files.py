"""Replacing a file as editors and databases do: a reader sees the old file or the new one,
never part of one, and the new file takes the old one's place in every way a user notices.

- The bytes go to a temporary file in the target's folder, flushed to disk, then renamed over
  the target (a rename within a filesystem is atomic).
- A symbolic link is followed: the file it points to is replaced and the link stays.
- An existing file's permission bits, owner and group (where the process may set them) pass to
  the new file; a new file gets 0o666 minus the umask, as `open` gives.
- Where the filesystem allows (Linux: ext4, xfs, btrfs, tmpfs...), the temporary file is created
  unnamed (O_TMPFILE), so a process killed while writing leaves nothing behind; it gets a name
  only for the rename. Elsewhere it is `.NAME.XXXXXXXXXXXX.cgraph.tmp`, locked while in use, and
  every replacement in a folder first removes the files of that naming that no process holds.
- A device or a pipe (/dev/stdout, a FIFO) is written to, never replaced.
- Errors are OSErrors of the usual types (PermissionError, FileNotFoundError, ...), one line
  naming the path the caller gave and what to do.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be removed there, which protects it instead
    fcntl = None  # type: ignore[assignment]

__all__ = ["replace_file"]

_SUFFIX = ".cgraph.tmp"
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}" + re.escape(_SUFFIX))
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)  # what a filesystem or kernel without it says
_HINTS = {
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "the filesystem is read-only: save elsewhere",
    errno.ENOSPC: "the disk is full: free some space or save elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or save elsewhere",
    errno.ENAMETOOLONG: "use a shorter name",
}


def replace_file(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Replace the file at `path` with what `write(f)` writes to `f` (a new, empty, seekable
    file open for writing), atomically (see the module docstring); returns the path of the
    file written (the target of a symbolic link). A failure at any point, in `write` too,
    leaves a previous file at `path` as it was."""
    given = os.fsdecode(path)
    if not given:
        raise FileNotFoundError(errno.ENOENT, "cannot save to '': the path is empty; give a file name")
    target = Path(given)
    if target.is_symlink():
        try:
            target = target.resolve()  # a dangling link: the file it names is created
        except (OSError, RuntimeError):  # (Python before 3.13 says RuntimeError)
            raise OSError(errno.ELOOP, f"cannot save to {given!r}: its symbolic links form a loop") from None
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"cannot save to {given!r}: it is a folder; give a file name in it")
    folder = target.parent
    try:
        old = os.stat(target)
    except OSError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):  # a device or a pipe: written to, never replaced
        buffer = io.BytesIO()  # (a pipe cannot seek)
        write(buffer)
        try:
            with open(target, "wb") as f:
                f.write(buffer.getbuffer())
        except OSError as e:
            raise _explain(e, given, target, folder, atomic=False) from None
        return target
    fd = tmp = None
    try:
        _remove_stale(folder)
        fd, tmp = _open_temporary(folder, target.name)
        with open(fd, "wb", closefd=False) as f:
            write(f)
        if old is not None:
            _take_over(fd, old)
        os.fsync(fd)
        if tmp is None:  # unnamed: give it a name for the rename
            tmp = _link(fd, folder, target.name)
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise _explain(e, given, target, folder) from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            _unlink(tmp)
    _fsync_folder(folder)
    return target


def _open_temporary(folder: Path, name: str) -> tuple[int, Path | None]:
    """A locked, empty file for writing in `folder`: unnamed if the filesystem allows (None as
    its path), else named `.NAME.HEX.cgraph.tmp`."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.open(folder, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)  # 0o666 minus the umask
        except OSError as e:
            if e.errno not in _NO_TMPFILE:
                raise
        else:
            _lock(fd)
            return fd, None
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(6)}{_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        _lock(fd)
        try:  # a clean-up in another process may have taken the file before the lock: start again
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


def _link(fd: int, folder: Path, name: str) -> Path:
    """A name in `folder` for the unnamed file open as `fd`."""
    # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N; a dst_dir_fd makes os.link call linkat
    # (given neither, it calls link(2), which does not follow the /proc link)
    dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        while True:
            tmp = f".{name}.{secrets.token_hex(6)}{_SUFFIX}"
            try:
                os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=dir_fd, follow_symlinks=True)
                return folder / tmp
            except FileExistsError:
                continue
    finally:
        os.close(dir_fd)


def _take_over(fd: int, old: os.stat_result) -> None:
    """Give the new file the old one's permission bits, and its owner and group if allowed."""
    new = os.fstat(fd)
    if hasattr(os, "fchown") and (old.st_uid, old.st_gid) != (new.st_uid, new.st_gid):
        try:
            os.fchown(fd, old.st_uid, old.st_gid)
        except PermissionError:  # only root may give a file away; keep the group if we can
            try:
                os.fchown(fd, -1, old.st_gid)
            except PermissionError:
                pass
    if hasattr(os, "fchmod"):
        os.fchmod(fd, old.st_mode & 0o7777)


def _lock(fd: int) -> None:
    """Mark the file as in use (the lock goes with the process: a killed save leaves none)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: its temporaries are never taken for stale
            pass


def _remove_stale(folder: Path) -> None:
    """Remove the temporary files of this module's naming in `folder` that no process holds:
    what saves that were killed before their rename left."""
    try:
        entries = [e.path for e in os.scandir(folder) if _TEMPORARY.fullmatch(e.name)]
    except OSError:
        return
    for path in entries:
        if fcntl is None:
            _unlink(path)  # fails while the writing process has it open
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                _unlink(path)
        except OSError:  # locked: a save in progress
            pass
        finally:
            os.close(fd)


def _unlink(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _explain(e: OSError, given: str, target: Path, folder: Path, atomic: bool = True) -> OSError:
    """The error `e` (of the same type) saying which path failed and what to do."""
    where = repr(given) if os.fspath(target) == given else f"{given!r} (a link to {os.fspath(target)!r})"
    if e.errno == errno.ENOENT and not folder.is_dir():
        what = f"the folder {os.fspath(folder)!r} does not exist; create it first"
    else:
        reason = e.strerror or str(e)
        hint = _HINTS.get(e.errno or 0)
        what = f"{reason[:1].lower()}{reason[1:]}" + (f"; {hint}" if hint else "")
    return OSError(e.errno, f"cannot save to {where}: {what}" + (" (any previous file there is unchanged)" if atomic
                                                                else ""))


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the platform allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
