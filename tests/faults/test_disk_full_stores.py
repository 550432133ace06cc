"""A full disk under the writers outside a story's own files: the queue snapshot (its local staging
copy and the copy on the mount), the restore at start, and a model download through a local fake
Hub. Each ends with one clear line naming the disk, no traceback, no half-written file, and works
once the space is back. (The prompt-embedding cache is a row of test_disk_full.py's matrix.)"""
from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig
from storage.backup import check_snapshot, restore, snapshot_loop
from svibot.cli import main
from tests.support.faults import FullFile, integrity

from .conftest import PHOTO

SNAP_FULL = "queue snapshot to {dest} failed, out of disk space: disk full while writing {path}"


def make_queue(data: DataDir, jobs: int) -> None:
    async def fill() -> None:
        async with await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos) as queue:
            for i in range(jobs):
                await queue.enqueue(NewJob(platform="cli", chat_id="c", user_id="u", photo=PHOTO.read_bytes(),
                                           prompts=[f"walk {i}"], settings={"seed": i}), Limits())
    asyncio.run(fill())


def page_limit(monkeypatch, name_ends: str) -> list[str]:
    """SQLite's own SQLITE_FULL ("database or disk is full", what a full disk gives) for the
    connection to the file whose name ends with `name_ends`: it may not grow past one page."""
    real, hit = sqlite3.connect, []

    def connect(database, *args, **kw):
        conn = real(database, *args, **kw)
        if str(database).endswith(name_ends):
            conn.execute("PRAGMA max_page_count = 1")
            hit.append(str(database))
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return hit


def leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.iterdir() if p.name.endswith((".part", ".snap", "-journal"))]


def run_snapshot_loop(db: Path, dest: Path) -> None:
    stop = asyncio.Event()
    stop.set()  # one snapshot, the one taken at shutdown
    asyncio.run(snapshot_loop(db, dest, 60.0, stop))


@pytest.mark.parametrize("where", ["local staging copy", "copy on the mount"])
def test_full_disk_under_a_snapshot_keeps_the_previous_one(where, tmp_path, monkeypatch, caplog):
    data, drive = DataDir(tmp_path / "data"), tmp_path / "drive"
    dest = drive / "queue.sqlite3"
    make_queue(data, 1)
    run_snapshot_loop(data.db_path, dest)
    assert check_snapshot(dest) == 1
    before = dest.read_bytes()
    make_queue(data, 1)  # the queue moved on; the next snapshot fails

    with monkeypatch.context() as m:
        if where == "local staging copy":
            hit = page_limit(m, ".snap")
        else:
            hit, copy = [], shutil.copyfile

            def copyfile(src, dst, **kw):
                hit.append(dst)
                with open(src, "rb") as s, open(dst, "wb") as d:
                    FullFile(d, 4096).write(s.read())  # one page reaches the mount, then ENOSPC

            m.setattr(shutil, "copyfile", copyfile)
        with caplog.at_level(logging.WARNING, logger="storage.backup"):
            run_snapshot_loop(data.db_path, dest)
    assert hit, "the write point was never reached"
    line, = [r for r in caplog.records if r.name == "storage.backup"]
    assert line.levelno == logging.WARNING and line.exc_info is None  # one line, no traceback
    message = line.getMessage()
    assert message.startswith(f"queue snapshot to {dest} failed, out of disk space: disk full while writing ")
    assert message.endswith("the previous snapshot is kept"), message
    named = data.root if where == "local staging copy" else drive
    assert f"writing {named}/" in message
    assert dest.read_bytes() == before and check_snapshot(dest) == 1  # the last whole snapshot
    assert leftovers(data.root, drive) == []
    assert integrity(data.db_path) == "ok"
    run_snapshot_loop(data.db_path, dest)  # space is back
    assert check_snapshot(dest) == 2


def test_full_disk_while_restoring_ends_serve_with_one_line_and_restores_later(tmp_path, monkeypatch, capsys):
    source, data = DataDir(tmp_path / "source"), DataDir(tmp_path / "data")
    snap = tmp_path / "drive" / "queue.sqlite3"
    make_queue(source, 2)
    run_snapshot_loop(source.db_path, snap)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:not-a-real-token")
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://127.0.0.1:9")  # never reached: restore comes first
    argv = ["--data-dir", str(data.root), "--log-level", "ERROR", "serve", "--telegram", "--snapshot-to", str(snap)]
    with monkeypatch.context() as m:
        hit = page_limit(m, data.db_path.name)
        assert main(argv) == 1
    assert hit
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == [
        f"svibot: the data dir {data.root} is out of disk space ({err.split('(')[1].split(';')[0]}; free at least "
        f"256 MiB), writing {data.db_path}; nothing was lost: after freeing space `svibot serve` starts where it "
        "stopped"], err
    assert leftovers(data.root) == []
    assert not data.db_path.exists() or data.db_path.stat().st_size == 0  # nothing half restored
    assert restore(snap, data.db_path) is True  # the next start, with space back
    with sqlite3.connect(data.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2


def test_full_disk_during_a_model_download_ends_with_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    from huggingface_hub import file_download

    from engine.models import presets
    from tests.engine.models.test_model_download import GGUF, PRESET, REPOS
    from tests.support.fake_hub import FakeHub

    data = tmp_path / "data"
    monkeypatch.setitem(presets.PRESETS, PRESET.name, PRESET)
    argv = ["--data-dir", str(data), "--log-level", "ERROR", "download", "--preset", PRESET.name]
    with FakeHub(REPOS) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with monkeypatch.context() as m:
            http_get, hit = file_download.http_get, []

            def full_http_get(url, temp_file, **kw):  # the second file (low.gguf) fills the disk halfway
                if url.endswith("low.gguf"):
                    hit.append(url)
                    temp_file = FullFile(temp_file, 100)
                return http_get(url, temp_file, **kw)

            m.setattr(file_download, "http_get", full_http_get)
            assert main(argv) == 1
        assert hit
        err = capsys.readouterr().err
        assert "Traceback" not in err
        full = [line for line in err.splitlines() if "out of disk space" in line]
        assert full == [line for line in err.splitlines() if line.startswith("svibot:")]
        assert len(full) == 1 and full[0].startswith(f"svibot: the data dir {data} is out of disk space (")
        assert full[0].endswith(f"writing {data / 'models' / 'LowNoise' / 'low.gguf'}; nothing was lost: after "
                                "freeing space `svibot download` fetches the files still missing")
        cached = [p for p in (data / "models").rglob("*") if p.is_file() or p.is_symlink()]
        assert not [p for p in cached if "low" in p.name]  # nothing at the final name
        # the hub removes its temp file (huggingface_hub 2.x); older ones keep it in blobs/ to resume from
        assert all(p.parent.name == "blobs" for p in cached if p.name.endswith(".incomplete"))
        fetched = len(hub.downloads)
        assert main(argv) == 0  # space is back
        capsys.readouterr()
    low = next((data / "models").rglob("low.gguf"))
    assert low.read_bytes() == REPOS[GGUF]["LowNoise/low.gguf"]
    assert f"{GGUF}/HighNoise/high.gguf" not in hub.downloads[fetched:]  # what arrived before is kept
