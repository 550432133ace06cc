"""Queue snapshots for hosts with a slow network mount (Colab + Google Drive): copy the live WAL
database to a plain rollback-journal file there, restore it at start, and keep bulky data-dir
folders on the mount through symlinks so restored paths still resolve.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from .errors import CorruptDatabase, DiskFull
from .files import is_disk_full
from .schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"
_REQUIRED_TABLES = frozenset({"jobs", "segments", "events"})
# Folders a restored queue points into (photos, segment files). Models are opt-in: ~33 GB for
# q4_k_m does not fit the 15 GB of a free Google Drive.
DRIVE_FOLDERS = ("photos", "jobs")


@contextmanager
def _local_temp(near: Path) -> Iterator[Path]:
    """A scratch file on the same (local) disk as the live DB; SQLite only ever touches local files."""
    near.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{near.name}.", suffix=".snap", dir=near.parent)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        for p in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)


def _job_count(conn: sqlite3.Connection) -> int:
    """Jobs in a database; 0 when it has no `jobs` table yet."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone() is None:
        return 0
    return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def check_snapshot(path: Path) -> int:
    """Raise `CorruptDatabase` unless `path` is a whole svibot queue database; return its job count."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        raise CorruptDatabase(f"{path} is not an SQLite database (header {head[:16]!r}); it was not restored")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            (check,) = conn.execute("PRAGMA quick_check").fetchone()
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            jobs = _job_count(conn)
    except sqlite3.DatabaseError as err:
        raise CorruptDatabase(f"{path} is not a readable SQLite database ({err}); it was not restored") from err
    if check != "ok":
        raise CorruptDatabase(f"{path} failed its integrity check ({check!r}); it was not restored")
    if not 1 <= version <= SCHEMA_VERSION:
        raise CorruptDatabase(
            f"{path} has queue schema version {version}; this svibot reads 1 to {SCHEMA_VERSION}")
    missing = _REQUIRED_TABLES - tables
    if missing:
        raise CorruptDatabase(f"{path} lacks the svibot tables {sorted(missing)}; it was not restored")
    return jobs


def local_has_data(db_path: Path) -> bool:
    """True when the local queue holds at least one job, or is a file we cannot read (never clobber)."""
    db_path = Path(db_path)
    wal = Path(f"{db_path}-wal")
    if not db_path.exists() and not wal.exists():
        return False
    if db_path.exists() and db_path.stat().st_size == 0 and not wal.exists():
        return False
    try:
        # A plain connection (not read-only) so a leftover WAL is replayed and counted.
        with closing(sqlite3.connect(db_path, timeout=30.0)) as conn:
            return _job_count(conn) > 0
    except sqlite3.DatabaseError:
        return True


def snapshot(db_path: Path, dest: Path) -> Path:
    """Copy the live queue at `db_path` to `dest` as one consistent, non-WAL SQLite file.

    Safe while writers are active: the online backup reads one consistent view. The copy is made
    on local disk, switched to a rollback journal and checked there, then written beside `dest`
    and renamed over it, so `dest` is always either the old or the new whole snapshot.
    Refuses (ValueError) to replace a snapshot with one of a queue that has no jobs, which is what
    a fresh runtime that skipped `restore` would write.
    """
    db_path, dest = Path(db_path), Path(dest)
    if not db_path.exists():
        raise FileNotFoundError(f"no queue database at {db_path} to snapshot")
    with _local_temp(db_path) as staged, _full_disk_names(staged):
        with closing(sqlite3.connect(db_path, timeout=30.0)) as src, closing(sqlite3.connect(staged)) as dst:
            src.backup(dst)  # one step (pages=-1): a single read transaction, never restarted
            jobs = _job_count(dst)
            # The backup copies the WAL flag in the header; a file on a network mount must not use WAL.
            (mode,) = dst.execute("PRAGMA journal_mode=DELETE").fetchone()
            assert mode == "delete", mode
        if jobs == 0 and dest.exists():
            raise ValueError(
                f"{db_path} has 0 jobs but the snapshot {dest} exists; not overwriting it "
                "(restore it first, or move it away)")
        check_snapshot(staged)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with _full_disk_names(dest, staged.stat().st_size):
                shutil.copyfile(staged, tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return dest


@contextmanager
def _full_disk_names(path: Path, needed: int | None = None) -> Iterator[None]:
    """A full disk while writing `path` (ENOSPC, or SQLite's "database or disk is full") becomes
    `DiskFull` naming it and the bytes to free (the data dir's margin unless `needed` says);
    other errors pass unchanged."""
    try:
        yield
    except (OSError, sqlite3.Error) as err:
        if is_disk_full(err) and not isinstance(err, DiskFull):
            raise DiskFull(path, needed=needed) from err
        raise


def restore(dest: Path, db_path: Path) -> bool:
    """Restore the snapshot `dest` into `db_path` when the local queue is missing or empty.

    Returns True if it restored, False if there was no snapshot or the local queue has jobs
    (it is never overwritten). An invalid snapshot raises `CorruptDatabase` and changes nothing.
    Call it before any process opens the queue.
    """
    dest, db_path = Path(dest), Path(db_path)
    if not dest.exists():
        return False
    if local_has_data(db_path):
        log.info("queue %s already has jobs; not restoring %s", db_path, dest)
        return False
    # A full local disk raises DiskFull; SQLite rolls the half-copied pages back, so the local queue
    # stays empty and the next start restores again.
    with _local_temp(db_path) as staged, _full_disk_names(db_path):
        shutil.copyfile(dest, staged)  # read the mount once, then work on local disk only
        jobs = check_snapshot(staged)
        with closing(sqlite3.connect(staged)) as src, closing(sqlite3.connect(db_path, timeout=30.0)) as dst:
            src.backup(dst)  # through SQLite, so a stale empty WAL beside db_path is handled too
    log.info("restored %d job(s) from %s into %s", jobs, dest, db_path)
    return True


def _fingerprint(db_path: Path) -> tuple:
    """Changes whenever the database or its WAL is written: lets the loop skip idle intervals."""
    out = []
    for p in (db_path, Path(f"{db_path}-wal")):
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


async def snapshot_loop(db_path: Path, dest: Path, interval_s: float, stop: asyncio.Event) -> None:
    """Snapshot every `interval_s` seconds while the queue changes, and once more when `stop` is set.

    A failed snapshot (the mount went away, a full Drive) is logged and retried next interval:
    the bots keep running on the local queue.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive but is {interval_s!r}")
    db_path, dest = Path(db_path), Path(dest)
    last = None
    while True:
        stopping = stop.is_set()
        if not stopping:
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
                stopping = True
            except asyncio.TimeoutError:
                pass
        now = _fingerprint(db_path)
        if now != last and db_path.exists():
            try:
                await asyncio.to_thread(snapshot, db_path, dest)
                last = now
                log.debug("queue snapshot written to %s", dest)
            except DiskFull as err:  # one line, no traceback: which disk, how full, what is kept
                log.warning("queue snapshot to %s failed, out of disk space: %s; the previous snapshot is "
                            "kept%s", dest, err, "" if stopping else f"; next try in {interval_s:.0f} s")
            except (OSError, sqlite3.Error, ValueError, CorruptDatabase) as err:
                log.warning("queue snapshot to %s failed: %s", dest, err)
        if stopping:
            return


def link_to_drive(data_root: Path, drive_root: Path, names: Iterable[str] = DRIVE_FOLDERS) -> list[Path]:
    """Make `data_root/<name>` a symlink to `drive_root/<name>` for each name; the DB stays local.

    Idempotent. An existing real folder is only replaced when empty; one holding files raises
    FileExistsError naming it, so nothing local is ever hidden behind a link.
    """
    data_root, drive_root = Path(data_root), Path(drive_root)
    data_root.mkdir(parents=True, exist_ok=True)
    linked = []
    for name in names:
        target, link = drive_root / name, data_root / name
        target.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if link.resolve() == target.resolve():
                linked.append(link)
                continue
            link.unlink()
        elif link.is_dir():
            if any(link.iterdir()):
                raise FileExistsError(
                    f"{link} already holds files; move them into {target} before linking it to Drive")
            link.rmdir()
        elif link.exists():
            raise FileExistsError(f"{link} is a file, not a folder; cannot link it to {target}")
        link.symlink_to(target, target_is_directory=True)
        linked.append(link)
    return linked


__all__ = ["DRIVE_FOLDERS", "check_snapshot", "link_to_drive", "local_has_data", "restore", "snapshot",
           "snapshot_loop"]
