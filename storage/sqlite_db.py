"""SQLite behind the `Database` interface: one aiosqlite connection per process, WAL mode, and
BEGIN IMMEDIATE transactions so writers on one host take turns. Files stay on the local disk."""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .db import BlobStore, Database, Session, Signals
from .errors import CorruptDatabase, DiskFull
from .files import is_disk_full, store_photo
from .schema import PRAGMAS, check_is_sqlite, migrate

log = logging.getLogger(__name__)
# Another process (a backup, a second `svibot jobs`) may hold the write lock past the busy timeout;
# BEGIN is then retried with growing pauses for this long before the error goes up.
LOCK_RETRY_S = 600.0
SQLITE_BUSY, SQLITE_LOCKED = 5, 6  # SQLite's result codes; the sqlite3 module names them only from 3.11
LOCK_BACKOFF_S = (0.05, 5.0)  # first pause, longest pause


def _is_locked(err: sqlite3.Error) -> bool:
    return getattr(err, "sqlite_errorcode", None) in (SQLITE_BUSY, SQLITE_LOCKED) \
        or "database is locked" in str(err)


class FileBlobs(BlobStore):
    """Single machine: a job's files already sit in the data dir, so a reference is just their path."""

    def __init__(self, photos_dir: Path) -> None:
        self._photos_dir = Path(photos_dir)

    async def put_photo(self, s: Session, job_id: int, data: bytes, suffix: str) -> tuple[str, str]:
        path, digest, created = await asyncio.to_thread(store_photo, self._photos_dir, data, suffix)
        if created and isinstance(s, _SqliteSession):  # a rolled-back insert keeps no photo behind
            s.on_rollback.append(lambda: path.unlink(missing_ok=True))
        return str(path), digest

    async def put_file(self, s: Session, job_id: int, path: Path) -> str:
        return str(path)

    async def local(self, ref: str, *, job_id: int | None = None) -> Path:
        return Path(ref)


class _SqliteSession:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.topics: list[str] = []
        self.on_rollback: list = []  # undo steps for files written inside the transaction

    async def fetchone(self, sql: str, *args: Any) -> Any | None:
        cur = await self._db.execute(sql, args)
        return await cur.fetchone()

    async def fetchall(self, sql: str, *args: Any) -> list[Any]:
        cur = await self._db.execute(sql, args)
        return list(await cur.fetchall())

    async def execute(self, sql: str, *args: Any) -> int:
        cur = await self._db.execute(sql, args)
        return cur.rowcount

    def notify(self, topic: str) -> None:
        # Other processes on this host poll; watchers in this process are woken after COMMIT.
        self.topics.append(topic)


class SqliteDatabase(Database):
    kind = "sqlite"
    for_update = ""  # BEGIN IMMEDIATE already holds the write lock for the whole transaction
    skip_locked = ""

    def __init__(self, db: aiosqlite.Connection, path: Path, photos_dir: Path) -> None:
        self._db = db
        self.lock_retry_s = LOCK_RETRY_S
        self.path = path
        self.blobs = FileBlobs(photos_dir)
        self.signals = Signals()
        self._write_lock = asyncio.Lock()  # one connection: writers of this process take turns

    @classmethod
    async def open(cls, path: Path, photos_dir: Path, *, busy_timeout_s: float = 30.0) -> "SqliteDatabase":
        path = Path(path)
        check_is_sqlite(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.parent.stat().st_uid == os.getuid():
            os.chmod(path.parent, 0o700)  # the data dir holds user data; an older one may be 0755
        db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_s)
        db.row_factory = sqlite3.Row
        try:
            await db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            for pragma in PRAGMAS:
                await db.execute(pragma)
            before = await migrate(db, path)
        except sqlite3.DatabaseError as err:
            await db.close()
            if is_disk_full(err):
                raise DiskFull(path) from err
            raise CorruptDatabase(
                f"{path} is not a usable svibot queue database ({err}). It was left untouched; "
                "move it away or point SVIBOT_DATA_DIR elsewhere."
            ) from err
        except BaseException:
            await db.close()
            raise
        opened = cls(db, path, photos_dir)
        opened.migrated_from = before
        return opened

    def json_len(self, column: str) -> str:
        return f"json_array_length({column})"

    async def fetchone(self, sql: str, *args: Any) -> Any | None:
        cur = await self._db.execute(sql, args)
        return await cur.fetchone()

    async def fetchall(self, sql: str, *args: Any) -> list[Any]:
        cur = await self._db.execute(sql, args)
        return list(await cur.fetchall())

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Session]:
        """The one write path: BEGIN IMMEDIATE, commit, or roll back on any error."""
        async with self._write_lock:
            session = _SqliteSession(self._db)
            await self._begin()
            try:
                try:
                    yield session
                    await self._db.execute("COMMIT")
                except BaseException:
                    try:  # a failed COMMIT (SQLITE_FULL) leaves the transaction open; end it
                        await self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite had rolled back already
                    for undo in session.on_rollback:
                        undo()
                    raise
            except sqlite3.Error as err:
                if is_disk_full(err):
                    raise DiskFull(self.path) from err
                raise
        self.signals.wake(session.topics)

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE; while another process holds the write lock past the busy timeout, retry
        with growing pauses (the worker and the bots keep running instead of failing a write)."""
        pause, deadline = LOCK_BACKOFF_S[0], time.monotonic() + self.lock_retry_s
        while True:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as err:
                if is_disk_full(err):
                    raise DiskFull(self.path) from err
                if not _is_locked(err) or time.monotonic() + pause > deadline:
                    raise
                log.warning("the queue database %s is locked by another process; retrying in %.2f s",
                            self.path, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, LOCK_BACKOFF_S[1])

    async def serialize(self, s: Session, key: str) -> None:
        pass  # BEGIN IMMEDIATE already runs every write transaction alone

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0])

    async def close(self) -> None:
        await self._db.close()
