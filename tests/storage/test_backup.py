"""Queue snapshots to a network mount and restore at start (storage/backup.py)."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from storage import CorruptDatabase, DataDir, JobQueue, QueueConfig
from storage.backup import check_snapshot, link_to_drive, restore, snapshot, snapshot_loop

from .conftest import new_job


def journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


async def open_queue(data: DataDir) -> JobQueue:
    return await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos)


async def test_snapshot_during_writes_is_consistent_and_reopens(make_sqlite_queue, data_dir, limits, tmp_path):
    q = await make_sqlite_queue()
    dest = tmp_path / "drive" / "queue.sqlite3"
    await q.enqueue(new_job(), limits)

    async def writer():
        for i in range(25):
            await q.enqueue(new_job(prompts=[f"walk {i}", "fly"]), limits)

    async def snapshotter():
        counts = []
        for _ in range(6):
            await asyncio.to_thread(snapshot, data_dir.db_path, dest)
            counts.append(check_snapshot(dest))
            await asyncio.sleep(0)
        return counts

    _, counts = await asyncio.gather(writer(), snapshotter())
    assert counts == sorted(counts) and 1 <= counts[0] and counts[-1] <= 26
    snapshot(data_dir.db_path, dest)
    assert check_snapshot(dest) == 26
    assert journal_mode(dest) != "wal"

    other = DataDir(tmp_path / "other")
    assert restore(dest, other.db_path) is True
    async with await open_queue(other) as restored:
        jobs = await restored.list_jobs(limit=100)
        assert len(jobs) == 26
        assert {tuple(j.prompts) for j in jobs} == {tuple(j.prompts) for j in await q.list_jobs(limit=100)}
        assert (await restored.stats()).queued == 26


async def test_snapshot_does_not_wait_for_or_include_an_open_write(make_sqlite_queue, data_dir, limits, tmp_path):
    q = await make_sqlite_queue()
    await q.enqueue(new_job(), limits)
    dest = tmp_path / "drive" / "queue.sqlite3"
    with closing(sqlite3.connect(data_dir.db_path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # another process mid-transaction holds the write lock
        writer.execute("UPDATE jobs SET state = 'cancelled'")
        snapshot(data_dir.db_path, dest)
        writer.execute("ROLLBACK")
    with closing(sqlite3.connect(f"{dest.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT state FROM jobs").fetchall() == [("queued",)]


async def test_snapshot_header_is_rollback_journal_and_leaves_no_temp_files(make_sqlite_queue, data_dir, limits, tmp_path):
    q = await make_sqlite_queue()
    await q.enqueue(new_job(), limits)
    dest = tmp_path / "drive" / "queue.sqlite3"
    assert snapshot(data_dir.db_path, dest) == dest
    assert journal_mode(data_dir.db_path) == "wal"  # the live queue keeps WAL on local disk
    assert journal_mode(dest) == "delete"
    assert dest.read_bytes()[18:20] == b"\x01\x01"  # file format versions: 2 would mean WAL
    assert sorted(p.name for p in dest.parent.iterdir()) == ["queue.sqlite3"]
    assert not [p for p in data_dir.root.iterdir() if p.name.endswith(".snap")]


async def test_snapshot_refuses_to_replace_a_snapshot_with_an_empty_queue(make_sqlite_queue, data_dir, limits, tmp_path):
    q = await make_sqlite_queue()
    await q.enqueue(new_job(), limits)
    dest = tmp_path / "queue.sqlite3"
    snapshot(data_dir.db_path, dest)
    fresh = DataDir(tmp_path / "fresh")
    await (await open_queue(fresh)).close()
    with pytest.raises(ValueError, match="0 jobs"):
        snapshot(fresh.db_path, dest)
    assert check_snapshot(dest) == 1


async def test_restore_into_missing_or_empty_queue_only(make_sqlite_queue, data_dir, limits, tmp_path):
    q = await make_sqlite_queue()
    job = await q.enqueue(new_job(prompts=["walk", "run"]), limits)
    dest = tmp_path / "queue.sqlite3"
    snapshot(data_dir.db_path, dest)

    missing = DataDir(tmp_path / "missing")
    assert restore(dest, missing.db_path) is True
    empty = DataDir(tmp_path / "empty")
    await (await open_queue(empty)).close()  # schema, WAL, no jobs: what a first `serve` leaves
    assert restore(dest, empty.db_path) is True
    for data in (missing, empty):
        async with await open_queue(data) as restored:
            assert (await restored.get_job(job.id)).prompts == ["walk", "run"]

    busy = DataDir(tmp_path / "busy")
    async with await open_queue(busy) as other:
        await other.enqueue(new_job(prompts=["swim"]), limits)
    before = busy.db_path.read_bytes()
    assert restore(dest, busy.db_path) is False
    assert busy.db_path.read_bytes() == before
    async with await open_queue(busy) as other:
        assert [j.prompts for j in await other.list_jobs()] == [["swim"]]

    assert restore(tmp_path / "nope.sqlite3", DataDir(tmp_path / "x").db_path) is False


def test_restore_rejects_files_that_are_not_svibot_snapshots(tmp_path):
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 10)
    foreign = tmp_path / "foreign.sqlite3"
    with closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE notes (x)")
        conn.commit()
    target = tmp_path / "data" / "queue.sqlite3"
    with pytest.raises(CorruptDatabase, match="not an SQLite database"):
        restore(garbage, target)
    with pytest.raises(CorruptDatabase, match="schema version 0"):
        restore(foreign, target)
    with closing(sqlite3.connect(foreign)) as conn:
        conn.executescript("CREATE TABLE jobs (id); CREATE TABLE segments (x); CREATE TABLE events (x);"
                           "PRAGMA user_version = 99;")
    with pytest.raises(CorruptDatabase, match="schema version 99; this svibot reads 1 to"):
        restore(foreign, target)
    assert not target.exists()


def test_restore_never_touches_an_unreadable_local_file(tmp_path):
    local = tmp_path / "queue.sqlite3"
    local.write_bytes(b"something else entirely" * 10)
    assert restore(tmp_path / "snapshot-does-not-matter.sqlite3", local) is False
    snap = tmp_path / "snap.sqlite3"
    with closing(sqlite3.connect(snap)) as conn:
        conn.execute("CREATE TABLE jobs (id)")
        conn.commit()
    assert restore(snap, local) is False
    assert local.read_bytes() == b"something else entirely" * 10


async def test_snapshot_loop_skips_idle_intervals_and_writes_a_last_one_on_stop(make_sqlite_queue, data_dir, limits, tmp_path):
    q = await make_sqlite_queue()
    await q.enqueue(new_job(), limits)
    dest = tmp_path / "drive" / "queue.sqlite3"
    stop = asyncio.Event()
    task = asyncio.create_task(snapshot_loop(data_dir.db_path, dest, 0.05, stop))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if dest.exists():
            break
    assert check_snapshot(dest) == 1
    first = dest.stat().st_mtime_ns
    await asyncio.sleep(0.2)
    assert dest.stat().st_mtime_ns == first  # nothing changed, nothing rewritten
    await q.enqueue(new_job(), limits)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert check_snapshot(dest) == 2


async def test_snapshot_loop_survives_a_broken_mount(make_sqlite_queue, data_dir, limits, tmp_path, caplog):
    q = await make_sqlite_queue()
    await q.enqueue(new_job(), limits)
    blocker = tmp_path / "drive"
    blocker.write_text("a file where the folder should be")
    stop = asyncio.Event()
    stop.set()
    with caplog.at_level(logging.WARNING, logger="storage.backup"):
        await asyncio.wait_for(snapshot_loop(data_dir.db_path, blocker / "queue.sqlite3", 1.0, stop), 5)
    assert "snapshot" in caplog.text and "failed" in caplog.text
    with pytest.raises(ValueError, match="interval_s must be positive"):
        await snapshot_loop(data_dir.db_path, tmp_path / "q.sqlite3", 0, stop)


def test_link_to_drive_is_idempotent_and_never_hides_local_files(tmp_path):
    root, drive = tmp_path / "svibot-data", tmp_path / "MyDrive" / "svibot"
    (root / "photos").mkdir(parents=True)  # empty: fine to replace by a link
    links = link_to_drive(root, drive)
    assert [p.name for p in links] == ["photos", "jobs"]
    assert all(p.is_symlink() and p.resolve() == (drive / p.name).resolve() for p in links)
    (root / "jobs" / "000001").mkdir()
    assert (drive / "jobs" / "000001").is_dir()
    assert link_to_drive(root, drive) == links

    (root / "models").mkdir()
    (root / "models" / "weights.gguf").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="models already holds files"):
        link_to_drive(root, drive, names=["models"])
    assert (root / "models" / "weights.gguf").exists() and not (root / "models").is_symlink()
