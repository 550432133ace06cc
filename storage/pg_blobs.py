"""A job's files kept in PostgreSQL (bytea chunks), with a local cache on every machine.

Workers on other machines share no disk with the bots, so every file a job makes travels through
the database, in the same transaction as the row that points to it. The cache sits under the
local data dir at the same relative path a single-machine install uses (jobs/000012/...), so a
worker reads back the segment it just wrote without a download.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path, PurePosixPath

from .db import BlobStore, Database, Session
from .files import atomic_write_bytes

CHUNK_BYTES = 1 << 20  # 1 MiB rows: well under the 1 GB bytea limit, few round trips per segment
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def job_blob_name(job_id: int, filename: str) -> str:
    return f"jobs/{job_id:06d}/{filename}"


def _checked(ref: str) -> PurePosixPath:
    """A reference from the database becomes a path under the cache only if it cannot escape it."""
    p = PurePosixPath(ref)
    if not _SAFE_NAME.match(ref) or ".." in p.parts:
        raise ValueError(f"refusing stored file name {ref!r}: not a plain relative path")
    return p


class PgBlobs(BlobStore):
    def __init__(self, db: Database, cache_root: Path) -> None:
        self._db = db
        self.root = Path(cache_root)
        self._verified: dict[Path, tuple[int, int, str]] = {}  # path -> (mtime_ns, size, sha256)

    def cache_path(self, ref: str) -> Path:
        return self.root.joinpath(*_checked(ref).parts)

    async def put_photo(self, s: Session, job_id: int, data: bytes, suffix: str) -> tuple[str, str]:
        name = job_blob_name(job_id, f"photo{suffix}")
        digest = await self._upload(s, job_id, name, data)
        await asyncio.to_thread(atomic_write_bytes, self.cache_path(name), data)
        return name, digest

    async def put_file(self, s: Session, job_id: int, path: Path) -> str:
        name = job_blob_name(job_id, Path(path).name)
        data = await asyncio.to_thread(Path(path).read_bytes)
        await self._upload(s, job_id, name, data)
        cached = self.cache_path(name)
        if Path(path).resolve() != cached.resolve():
            await asyncio.to_thread(atomic_write_bytes, cached, data)
        return name

    async def _upload(self, s: Session, job_id: int, name: str, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        _checked(name)
        await s.execute("DELETE FROM blobs WHERE name = ?", name)  # a retried write replaces, never mixes
        await s.execute(
            "INSERT INTO blobs (name, job_id, size, sha256, created_at) VALUES (?, ?, ?, ?, "
            "EXTRACT(EPOCH FROM clock_timestamp()))", name, job_id, len(data), digest)
        for seq, start in enumerate(range(0, len(data), CHUNK_BYTES)):
            await s.execute("INSERT INTO blob_chunks (name, seq, data) VALUES (?, ?, ?)",
                            name, seq, data[start:start + CHUNK_BYTES])
        return digest

    async def local(self, ref: str, *, job_id: int | None = None) -> Path:
        path = self.cache_path(ref)
        row = await self._db.fetchone("SELECT size, sha256, job_id FROM blobs WHERE name = ?", ref)
        if row is None:
            raise FileNotFoundError(f"no stored file {ref!r} in the database (its job may have been deleted)")
        size, digest = int(row[0]), row[1]
        if job_id is not None and row[2] != job_id:
            raise ValueError(f"stored file {ref!r} belongs to job #{row[2]}, not job #{job_id}")
        if await asyncio.to_thread(self._cache_holds, path, size, digest):
            return path
        rows = await self._db.fetchall("SELECT data FROM blob_chunks WHERE name = ? ORDER BY seq", ref)
        data = b"".join(bytes(r[0]) for r in rows)
        got = hashlib.sha256(data).hexdigest()
        if len(data) != size or got != digest:
            raise OSError(f"stored file {ref!r} is incomplete or damaged: {len(data)} of {size} bytes, "
                          f"sha256 {got[:12]} instead of {digest[:12]}")
        await asyncio.to_thread(atomic_write_bytes, path, data)
        st = path.stat()
        self._verified[path] = (st.st_mtime_ns, st.st_size, digest)
        return path

    def _cache_holds(self, path: Path, size: int, digest: str) -> bool:
        """True if the cached copy has the stored bytes (hashed once per file version)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        if st.st_size != size:
            return False
        if self._verified.get(path) == (st.st_mtime_ns, st.st_size, digest):
            return True
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
        self._verified[path] = (st.st_mtime_ns, st.st_size, digest)
        return True
