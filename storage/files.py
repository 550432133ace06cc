"""Files under the data dir: atomic writes and the content-addressed photo store."""
from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .disk import free_bytes
from .errors import DiskFull

# A write that fails some other way (ffmpeg's exit code, torch's zip writer) while less than this is
# free failed for want of space.
LOW_SPACE = 16 * 2**20
ENOSPC_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
SQLITE_FULL = 13  # SQLite's result code; the sqlite3 module names it only from Python 3.11
# How libraries that do not raise OSError report ENOSPC/EDQUOT: Rust's std::io::Error (safetensors'
# SafetensorError: "I/O error: No space left on device (os error 28)") and C's strerror text.
FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "(os error 28)", "(os error 122)")


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT (also as a wrapped library error's text), or SQLite's SQLITE_FULL."""
    if isinstance(err, DiskFull):
        return True
    if isinstance(err, OSError) and err.errno in ENOSPC_ERRNOS:
        return True
    if isinstance(err, sqlite3.Error):
        return getattr(err, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(err)
    return any(text in str(err) for text in FULL_TEXTS)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it over `final` only if the block succeeds.

    A failed or interrupted write leaves no partial `final` behind. ENOSPC becomes `DiskFull`.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + final.suffix, dir=final.parent)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(final) from err
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except DiskFull:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err) or free_bytes(final.parent) < LOW_SPACE:
            raise DiskFull(final) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_partial(path: Path) -> bool:
    """True for the temp file of an atomic write (`.NAME.XXXX.part.EXT`, or a helper file named
    after one): what a process killed in the middle of a write leaves behind."""
    name = Path(path).name
    return name.startswith(".") and ".part" in name


def remove_partials(folder: Path) -> list[Path]:
    """Delete the temp files that a killed process left in `folder` (not below it); returns them.

    Call it only where no other process can be writing: a job's folder is written by the worker
    holding its lease alone, so the next holder may sweep it before it resumes the job."""
    return _remove_files(folder, is_partial)


def remove_unrecorded(folder: Path, kept: set[str]) -> list[Path]:
    """Delete the files in a job's `folder` whose names are not in `kept` (the files its rows name),
    temp files included; returns them. The same rule as `remove_partials`: only the lease holder."""
    return _remove_files(folder, lambda path: path.name not in kept)


def _remove_files(folder: Path, doomed) -> list[Path]:
    """Delete the plain files directly in `folder` for which `doomed(path)` holds; a missing folder has none."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except FileNotFoundError:
        return removed
    for path in entries:
        if path.is_file() and doomed(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(final: Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(final)


def store_photo(photos_dir: Path, data: bytes, suffix: str = ".img") -> tuple[Path, str, bool]:
    """Store photo bytes under their sha256; the same photo is stored once.

    Returns (path, sha256, whether this call wrote the file)."""
    digest = hashlib.sha256(data).hexdigest()
    path = Path(photos_dir) / digest[:2] / f"{digest}{suffix}"
    if path.exists():
        return path, digest, False
    atomic_write_bytes(path, data)
    return path, digest, True
