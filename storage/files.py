"""Files under the data dir: atomic writes and the content-addressed photo store."""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFull


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it over `final` only if the block succeeds.

    A failed or interrupted write leaves no partial `final` behind. ENOSPC becomes `DiskFull`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise DiskFull(final) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(final: Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(final)


def store_photo(photos_dir: Path, data: bytes, suffix: str = ".img") -> tuple[Path, str]:
    """Store photo bytes under their sha256; the same photo is stored once. Returns (path, sha256)."""
    digest = hashlib.sha256(data).hexdigest()
    path = Path(photos_dir) / digest[:2] / f"{digest}{suffix}"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path, digest
