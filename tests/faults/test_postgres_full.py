"""PostgreSQL's disk filling up (SQLSTATE 53100 `disk_full`) ends a story the same way as a full data
dir: `svibot story` exits 1 with one line that names the database (without its password) and says
it is out of disk space, no traceback, nothing recorded by the failed transaction, the job paused;
once space is back `svibot worker --once` finishes it with an uninterrupted run's frames.

The server raises the error from a trigger with the message and hint PostgreSQL itself gives when a
table cannot grow (src/backend/storage/smgr/md.c, `mdextend`: "could not extend file ...: No space
left on device", hint "Check free disk space."; elog.c's `errcode_for_file_access` maps ENOSPC to
ERRCODE_DISK_FULL): asyncpg delivers the same `DiskFullError` for both."""
from __future__ import annotations

import asyncio
import json

import asyncpg
import numpy as np

from storage import DataDir, JobQueue, QueueConfig
from storage.dburl import parse_database_url
from svibot.cli import main
from tests.support.faults import half_written

from .conftest import final_frames, story_argv, worker_once_argv

FULL_AT = "%/segment_001.mp4"  # segment 2's video is stored in the database as blob chunks
TRIGGER = f"""
CREATE FUNCTION disk_is_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name LIKE '{FULL_AT}' THEN
        RAISE EXCEPTION 'could not extend file "base/16384/16402": No space left on device'
            USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER disk_is_full BEFORE INSERT ON blob_chunks FOR EACH ROW EXECUTE FUNCTION disk_is_full();
"""


async def sql(url: str, statement: str) -> list:
    con = await asyncpg.connect(url)
    try:
        return await con.fetch(statement) if statement.lstrip().upper().startswith("SELECT") \
            else await con.execute(statement)
    finally:
        await con.close()


def test_postgres_disk_full_pauses_the_story_with_one_line(pg_url, tmp_path, monkeypatch, capsys, reference):
    data = tmp_path / "data"
    password = pg_url.split("//")[1].split("@")[0].split(":")[1]

    async def create_schema() -> None:  # the trigger needs the tables
        dd = DataDir(data)
        await (await JobQueue.open(QueueConfig(db_path=dd.db_path, database_url=pg_url), dd.photos,
                                   listen=False)).close()

    asyncio.run(create_schema())
    asyncio.run(sql(pg_url, TRIGGER))
    monkeypatch.setenv("SVIBOT_DATABASE_URL", pg_url)
    assert main(story_argv(data)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    full = [line for line in err.splitlines() if "out of disk space" in line]
    assert full == [
        f"svibot: the database {parse_database_url(pg_url).safe} is out of disk space (SQLSTATE 53100: could not extend file "
        '"base/16384/16402": No space left on device); nothing was lost: after freeing space on the database '
        "server `svibot worker --once` finishes the work"], err
    assert password not in err

    jobs = asyncio.run(sql(pg_url, "SELECT id, state, attempts FROM jobs"))
    assert [tuple(j) for j in jobs] == [(1, "queued", 0)]  # paused, not failed
    segments = asyncio.run(sql(pg_url, "SELECT idx FROM segments ORDER BY idx"))
    assert [s["idx"] for s in segments] == [0]  # the failed transaction recorded nothing
    stored = asyncio.run(sql(pg_url, "SELECT name FROM blobs WHERE name LIKE '%segment_001%'"))
    assert stored == []
    events = asyncio.run(sql(pg_url, "SELECT kind, payload FROM events ORDER BY id"))
    assert [e["kind"] for e in events].count("segment") == 1
    assert "disk is full" in json.loads(events[-1]["payload"])["paused"]  # the chat hears why
    assert half_written(data) == []

    asyncio.run(sql(pg_url, "DROP TRIGGER disk_is_full ON blob_chunks"))  # space is back
    assert main(worker_once_argv(data)) == 0
    capsys.readouterr()
    jobs = asyncio.run(sql(pg_url, "SELECT state, attempts FROM jobs"))
    assert [tuple(j) for j in jobs] == [("done", 0)]
    np.testing.assert_array_equal(final_frames(data), reference)
