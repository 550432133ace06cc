"""What only the PostgreSQL backend has: wake-ups across connections, the schema version table and
its upgrades, files kept in the database for machines that share no disk, TLS defaults, a
restricted worker role, and logins that never leak the password. A real server runs the tests."""
from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest

from storage import (
    CorruptDatabase,
    DatabaseUnavailable,
    DataDir,
    JobQueue,
    Limits,
    QueueConfig,
    SchemaOutdated,
    SchemaTooNew,
    WorkerId,
)
from storage.dburl import parse_database_url, redact
from storage.errors import BadSetting
from storage.pg_roles import worker_grants
from storage.pg_schema import MIGRATIONS, SCHEMA_VERSION
from storage.schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests.storage.conftest import new_job, png_bytes

WORKER = WorkerId(owner="gpu-box:42:abc", host="gpu-box", pid=42)


def _config(url: str, root, **kw) -> QueueConfig:
    data = DataDir(root)
    return QueueConfig(db_path=data.db_path, database_url=url, **kw)


async def _open(url: str, root, **kw) -> JobQueue:
    return await JobQueue.open(_config(url, root), DataDir(root).photos, **kw)


async def _sql(url: str, *statements: str):
    con = await asyncpg.connect(url)
    try:
        out = None
        for stmt in statements:
            out = await con.fetch(stmt)
        return out
    finally:
        await con.close()


async def test_notify_wakes_a_waiter_on_another_connection_long_before_its_poll(pg_url, tmp_path):
    waiter, other = await _open(pg_url, tmp_path / "a"), await _open(pg_url, tmp_path / "b")
    try:
        await asyncio.wait_for(waiter._db.listening.wait(), 10)
        work, news = waiter.watch("jobs"), waiter.watch("events")
        t0 = time.monotonic()
        waiting = asyncio.create_task(work.wait(30))
        await asyncio.sleep(0.1)
        await other.enqueue(new_job(), Limits())
        assert await waiting is True
        assert time.monotonic() - t0 < 5  # the 30 s poll never ran out
        await other.enqueue(new_job(), Limits())
        await other.claim(WORKER)  # the second job moves up: an outbox event
        assert await news.wait(30) is True
    finally:
        await waiter.close()
        await other.close()


async def test_polling_carries_on_while_the_listen_connection_is_down(pg_url, tmp_path, caplog):
    waiter, other = await _open(pg_url, tmp_path / "a"), await _open(pg_url, tmp_path / "b")
    try:
        await asyncio.wait_for(waiter._db.listening.wait(), 10)
        work = waiter.watch("jobs")
        with caplog.at_level(logging.WARNING, logger="storage.pg_db"):
            await _sql(pg_url, f"SELECT pg_terminate_backend({waiter._db.listener_pid})")
            for _ in range(100):
                if not waiter._db.listening.is_set():
                    break
                await asyncio.sleep(0.02)
        assert not waiter._db.listening.is_set()
        assert "polling until it is back" in caplog.text
        await other.enqueue(new_job(), Limits())
        # Deaf: the waiter only finds the job by polling, and the verbs still work meanwhile.
        await work.wait(0.2)
        assert (await waiter.claim(WORKER)) is not None
        # The listener comes back by itself (1 s back-off) and wakes everyone once to look.
        await asyncio.wait_for(waiter._db.listening.wait(), 10)
        assert await work.wait(5) is True
        await other.enqueue(new_job(), Limits())
        assert await work.wait(30) is True
    finally:
        await waiter.close()
        await other.close()


async def test_schema_version_table_and_a_newer_schema_is_refused(pg_url, tmp_path):
    q = await _open(pg_url, tmp_path)
    assert await q.schema_version() == SCHEMA_VERSION == len(SQLITE_MIGRATIONS)
    await q.close()
    await _sql(pg_url, f"UPDATE svibot_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer than this svibot's") as err:
        await _open(pg_url, tmp_path)
    assert "<redacted>" in str(err.value) and pg_url.split(":")[2].split("@")[0] not in str(err.value)


async def test_an_old_schema_waits_for_db_upgrade_then_keeps_its_jobs(pg_url, tmp_path):
    # A database made by the first release: migration 1 only, with one job whose settings name a preset.
    await _sql(pg_url, *MIGRATIONS[0], "CREATE TABLE svibot_schema (version INTEGER NOT NULL)",
               "INSERT INTO svibot_schema VALUES (1)",
               """INSERT INTO jobs (platform, chat_id, user_id, photo_path, photo_sha256, prompts, settings,
                                    created_at, updated_at)
                  VALUES ('cli', 'c', 'u', 'p.png', 'ab', '["walk"]', '{"preset": "q8_0"}', 1, 1)""")
    with pytest.raises(SchemaOutdated, match="Run `svibot db upgrade`"):
        await _open(pg_url, tmp_path, migrate=False)
    assert await JobQueue.upgrade(_config(pg_url, tmp_path), tmp_path / "photos") == (1, SCHEMA_VERSION)
    assert await JobQueue.upgrade(_config(pg_url, tmp_path), tmp_path / "photos") == (SCHEMA_VERSION,) * 2
    q = await _open(pg_url, tmp_path, migrate=False)
    try:
        assert await q.claim(WORKER, presets={"q4_k_m"}) is None  # the preset column was filled in
        assert (await q.claim(WORKER, presets={"q8_0"})).prompts == ["walk"]
    finally:
        await q.close()


async def test_workers_starting_together_upgrade_an_empty_database_once(pg_url, tmp_path):
    queues = await asyncio.gather(*[_open(pg_url, tmp_path / str(i)) for i in range(4)])
    try:
        assert [q._db.migrated_from for q in queues].count(0) >= 1
        rows = await _sql(pg_url, "SELECT version FROM svibot_schema")
        assert [r[0] for r in rows] == [SCHEMA_VERSION]
    finally:
        for q in queues:
            await q.close()


async def test_another_programs_tables_are_left_alone(pg_url, tmp_path):
    await _sql(pg_url, "CREATE TABLE jobs (invoice_no INTEGER)")
    with pytest.raises(CorruptDatabase, match=r"already has table\(s\) \['jobs'\].*another program"):
        await _open(pg_url, tmp_path)
    assert [r[0] for r in await _sql(pg_url, "SELECT to_regclass('svibot_schema')")] == [None]


async def test_files_travel_through_the_database_between_machines(pg_url, tmp_path):
    bot_root, gpu_root = tmp_path / "bot", tmp_path / "gpu"
    bot, gpu = await _open(pg_url, bot_root), await _open(pg_url, gpu_root)
    try:
        photo = png_bytes((120, 90), "plum")
        job = await bot.enqueue(new_job(["a"], photo=photo), Limits())
        assert job.photo_path == f"jobs/{job.id:06d}/photo.png"  # named by its bytes
        got = await gpu.local_file(job.photo_path)
        assert got.is_relative_to(gpu_root) and got.read_bytes() == photo
        await gpu.claim(WORKER)
        video = DataDir(gpu_root).segment_video(job.id, 0)
        video.parent.mkdir(parents=True, exist_ok=True)
        video.write_bytes(bytes(range(256)) * 5000)  # > 1 MiB: two chunks
        seg = await gpu.record_segment(job.id, WORKER, index=0, prompt="a", video_path=video, carry_path=None,
                                       num_frames=9, duration_s=0.5, gen_seconds=1.0)
        assert await gpu.local_file(seg.video_path) == video  # the worker's own file is the cache
        on_bot = await bot.local_file(seg.video_path)
        assert on_bot.is_relative_to(bot_root) and on_bot.read_bytes() == video.read_bytes()
        on_bot.write_bytes(b"damaged" + on_bot.read_bytes()[7:])  # same size, wrong bytes
        assert (await bot.local_file(seg.video_path)).read_bytes() == video.read_bytes()
        with pytest.raises(FileNotFoundError, match="no stored file"):
            await bot.local_file("jobs/999999/segment_000.mp4")
        with pytest.raises(ValueError, match="not a plain relative path"):
            await bot.local_file("../../etc/passwd")
    finally:
        await bot.close()
        await gpu.close()


def test_remote_hosts_get_tls_by_default_and_urls_are_printed_without_passwords():
    assert parse_database_url("postgresql://svibot:pw@db.example.com/q").ssl == "require"
    assert parse_database_url("postgres://svibot:pw@db.example.com/q?sslmode=verify-full").ssl is None
    assert parse_database_url("postgresql://svibot:pw@127.0.0.1:5432/q").ssl is None
    assert parse_database_url("postgresql:///q?host=/var/run/postgresql").ssl is None
    assert redact("postgresql://svibot:hunter2@db.example.com:6543/q") == "postgresql://svibot:<redacted>@db.example.com:6543/q"
    with pytest.raises(BadSetting, match="must start with postgresql://") as err:
        parse_database_url("mysql://root:hunter2@db/q")
    assert "hunter2" not in str(err.value)


async def test_a_refused_login_never_shows_the_password(pg_server, pg_url, tmp_path, caplog):
    bad = pg_server.url(pg_url.rsplit("/", 1)[1], password="Wr0ng-Secret-pw")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(DatabaseUnavailable, match="password authentication failed") as err:
            await _open(bad, tmp_path)
    assert "Wr0ng-Secret-pw" not in str(err.value) + caplog.text and ":<redacted>@127.0.0.1" in str(err.value)
    assert "Wr0ng-Secret-pw" not in repr(_config(bad, tmp_path))
    # sslmode from the URL is honoured: this test server speaks no TLS, so requiring it fails.
    with pytest.raises(DatabaseUnavailable, match="cannot connect"):
        await _open(pg_url + "?sslmode=require", tmp_path)


async def test_worker_role_runs_jobs_but_cannot_queue_rewrite_or_misroute(pg_server, pg_url, tmp_path):
    owner = await _open(pg_url, tmp_path / "bot")
    await _sql(pg_url, "DROP ROLE IF EXISTS gpu_worker", "CREATE ROLE gpu_worker LOGIN PASSWORD 'wk-pass'",
               *worker_grants("gpu_worker"))
    worker_url = pg_server.url(pg_url.rsplit("/", 1)[1], user="gpu_worker", password="wk-pass")
    gpu = await _open(worker_url, tmp_path / "gpu")
    try:
        job = await owner.enqueue(new_job(["a"], platform="telegram"), Limits())
        assert (await gpu.claim(WORKER)).id == job.id
        assert await gpu.heartbeat(job.id, WORKER) is False
        story = tmp_path / "story.mp4"
        story.write_bytes(b"story")
        await gpu.complete(job.id, WORKER, story, {"num_segments": 1})
        assert (await owner.get_job(job.id)).state == "done"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await gpu.enqueue(new_job(), Limits())
        for stmt in ("UPDATE jobs SET prompts = '[\"spam\"]'", "UPDATE jobs SET chat_id = 'victim'",
                     "DELETE FROM jobs"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await _sql(worker_url, stmt)
        await _sql(worker_url, f"""INSERT INTO events (job_id, platform, chat_id, kind, created_at)
                                   VALUES ({job.id}, 'discord', 'victim', 'progress', 1)""")
        forged = (await owner.events_for_job(job.id))[-1]
        assert (forged.platform, forged.chat_id) == ("telegram", "chat1")  # rerouted to the job's chat
    finally:
        await gpu.close()
        await owner.close()
        await _sql(pg_url, "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM gpu_worker",
                   "REVOKE ALL ON SCHEMA public FROM gpu_worker")
        await _sql(pg_server.url(), "DROP ROLE IF EXISTS gpu_worker")


async def test_a_restricted_role_cannot_upgrade_and_says_who_can(pg_server, pg_url, tmp_path):
    await _sql(pg_url, *MIGRATIONS[0], "CREATE TABLE svibot_schema (version INTEGER NOT NULL)",
               "INSERT INTO svibot_schema VALUES (1)", "DROP ROLE IF EXISTS old_worker",
               "CREATE ROLE old_worker LOGIN PASSWORD 'pw2'", "GRANT SELECT ON svibot_schema, jobs TO old_worker")
    url = pg_server.url(pg_url.rsplit("/", 1)[1], user="old_worker", password="pw2")
    try:
        with pytest.raises(SchemaOutdated, match="database's owner role"):
            await _open(url, tmp_path)
        assert [r[0] for r in await _sql(pg_url, "SELECT version FROM svibot_schema")] == [1]
    finally:
        await _sql(pg_url, "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM old_worker")
        await _sql(pg_server.url(), "DROP ROLE IF EXISTS old_worker")


async def test_a_file_of_another_job_is_refused_when_a_job_is_named(pg_url, tmp_path):
    q = await _open(pg_url, tmp_path)
    try:
        a = await q.enqueue(new_job(), Limits())
        b = await q.enqueue(new_job(), Limits())
        assert (await q.local_file(a.photo_path, job_id=a.id)).exists()
        with pytest.raises(ValueError, match=f"belongs to job #{a.id}, not job #{b.id}"):
            await q.local_file(a.photo_path, job_id=b.id)
    finally:
        await q.close()
