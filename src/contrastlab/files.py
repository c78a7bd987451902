"""Files the library writes: atomically, under a lock, with one-line errors for environment faults.

- :func:`atomic_write` / :func:`atomic_target`: a file is written to a temporary name in its own
  folder, flushed to disk, then renamed over the target, so a reader (or a resumed run) sees the
  old file or the new one, never a half-written one. Temporaries are named
  ``.NAME.tmp-PID-XXXX`` and :func:`remove_stale_temporaries` deletes those of killed writers.
- :class:`FolderLock`: one process at a time in a run folder (``flock`` on ``FOLDER/.lock``;
  the operating system releases it when the process dies, so a killed run never leaves a
  stale lock).
- :func:`write_error`: an ``OSError`` of a write as a one-line :class:`UserError`: no space
  left (naming the file system), a read-only file system, a missing permission.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError

TMP_MARK = ".tmp-"


def _mount_point(path: Path) -> str:
    p = path.resolve() if path.exists() else path.parent.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def write_error(e: OSError, path: Path, kept: str = "the previous version is kept") -> UserError:
    """A one-line error for an OSError raised while writing ``path``."""
    path = Path(path)
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
        return UserError(f"{what} on {_mount_point(path)} while writing {path}; {kept}; free some space and rerun")
    if code == errno.EROFS:
        return UserError(f"{path.parent} is on a read-only file system, cannot write {path.name}; "
                         "choose a writable folder (trainer.out_dir=...)")  # fmt: skip
    if code in (errno.EACCES, errno.EPERM):
        return UserError(f"no permission to write {path}; choose a folder you can write to (trainer.out_dir=...) "
                         "or fix its permissions")  # fmt: skip
    reason = e.strerror or str(e)
    return UserError(f"could not write {path} ({reason}); {kept}")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}")


def _fsync_dir(folder: Path) -> None:
    if sys.platform.startswith("win"):
        return
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


@contextlib.contextmanager
def atomic_target(path: str | Path, kept: str = "the previous version is kept") -> Iterator[Path]:
    """``with atomic_target(p) as tmp: write(tmp)``: the writer writes to ``tmp``; on success the
    file is flushed to disk and renamed to ``p``; on any error (or a kill) ``p`` is untouched and
    ``tmp`` removed (or, after a kill, removed by :func:`remove_stale_temporaries` later).
    An OSError of the write becomes a one-line :class:`UserError` (see :func:`write_error`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path, kept) from None
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise write_error(e, path, kept) from None
    except RuntimeError as e:
        # torch.save reports a failed write as RuntimeError ("... unexpected pos ..."): find the cause
        cause = _probe_write_fault(path.parent)
        if cause is not None:
            raise write_error(cause, path, kept) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _probe_write_fault(folder: Path) -> OSError | None:
    """After a failed write whose error does not say why: the OSError a small write in
    ``folder`` raises now (no space, read-only, ...), or None."""
    probe = folder / f".probe{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        return None
    except OSError as e:
        return e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def atomic_write(path: str | Path, data: bytes | str, kept: str = "the previous version is kept") -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_target(path, kept) as tmp:
        with open(tmp, "wb") as f:
            f.write(raw)


def atomic_save(path: str | Path, save: Callable[[Path], None], kept: str = "the previous version is kept") -> None:
    """``save(tmp_path)`` (e.g. ``lambda p: image.save(p, format="PNG")``), then rename atomically."""
    with atomic_target(path, kept) as tmp:
        save(tmp)


def remove_stale_temporaries(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporaries that killed writers left in ``folder`` (``.NAME.tmp-*``, and the
    ``.NAME.tmpPID`` of earlier versions). Call it only while holding the folder's lock."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    pattern = "**/.*.tmp*" if recursive else ".*.tmp*"
    for p in folder.glob(pattern):
        if p.is_file() and (TMP_MARK in p.name or _old_tmp(p.name)):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _old_tmp(name: str) -> bool:
    """``.last.ckpt.tmp1234`` / ``.report.html.tmp`` (names of earlier versions)."""
    head, _, tail = name.rpartition(".tmp")
    return bool(head) and (tail == "" or tail.isdigit())


class FolderLock:
    """An exclusive lock on a folder for the lifetime of a process (or of the ``with`` block).

    ``acquire()`` raises a one-line :class:`UserError` naming the holder's pid when another
    process holds it. The lock is ``flock`` on ``FOLDER/.lock``; the kernel drops it when the
    holder exits or is killed. Where ``fcntl`` does not exist (Windows) it is a no-op.
    """

    def __init__(self, folder: str | Path, what: str = "trains into"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, self.path, "nothing was written") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 64, 0).decode().strip()
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise UserError(f"{self.folder} is in use: {who} {self.what} it now; wait for it to finish, "
                            "or use another folder (trainer.out_dir=...)") from None  # fmt: skip
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
