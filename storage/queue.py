"""The durable job queue: the only place that writes SQL.

Adapters enqueue jobs and read the outbox; the worker claims jobs, heartbeats its lease and records
segments (`leases.py`). Two backends sit behind one set of verbs: SQLite in the data dir (one
machine; several processes may share the file) and PostgreSQL (`QueueConfig.database_url`; bots
and workers on any number of machines, sharing no disk).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import Limits, QueueConfig, Quota
from .db import Database, Session, Watch
from .errors import DailyQuotaReached, JobNotFound, NotAllowed, TooManyActiveJobs
from .leases import LeaseVerbs
from .retention import RetentionVerbs
from .models import ACTIVE_STATES, PLATFORMS, Event, Job, NewJob, Segment
from .schema import SCHEMA_VERSION
from .usage import UsageVerbs
from .user_settings import UserSettingsVerbs
from .validate import check_photo, check_prompts
from .workers import WorkerId, WorkerInfo, WorkerStatus


async def open_database(config: QueueConfig, photos_dir: Path, *, migrate: bool = True,
                        listen: bool = True) -> Database:
    if config.database_url:
        from .pg_db import PgDatabase  # asyncpg is only imported by PostgreSQL users

        return await PgDatabase.open(config.database_url, config.files_root, migrate_schema=migrate, listen=listen)
    from .sqlite_db import SqliteDatabase

    return await SqliteDatabase.open(config.db_path, photos_dir, busy_timeout_s=config.busy_timeout_s)


class JobQueue(LeaseVerbs, UsageVerbs, RetentionVerbs, UserSettingsVerbs):
    """Verbs over the queue. Open with `await JobQueue.open(config, photos_dir)`."""

    def __init__(self, db: Database, config: QueueConfig, clock: Callable[[], float]) -> None:
        self._db = db
        self.config = config
        self._clock = clock

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    async def open(cls, config: QueueConfig, photos_dir: Path, *, clock: Callable[[], float] = time.time,
                   migrate: bool = True, listen: bool = True) -> "JobQueue":
        """Connect and bring the schema up to date (`migrate=False`: refuse an older schema instead)."""
        return cls(await open_database(config, photos_dir, migrate=migrate, listen=listen), config, clock)

    @staticmethod
    async def upgrade(config: QueueConfig, photos_dir: Path) -> tuple[int, int]:
        """`svibot db upgrade`: bring the schema up to date; returns (version before, after)."""
        db = await open_database(config, photos_dir, listen=False)
        try:
            return db.migrated_from, await db.schema_version()
        finally:
            await db.close()

    @property
    def backend(self) -> str:
        """"sqlite" or "postgresql"."""
        return self._db.kind

    async def schema_version(self) -> int:
        return await self._db.schema_version()

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> "JobQueue":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- files and wake-ups --------------------------------------------------------------------
    async def local_file(self, ref: str, *, job_id: int | None = None) -> Path:
        """A local path for a file a row refers to (photo, segment, carry, story), fetched from the
        database into this machine's cache where the backend keeps files there.

        With `job_id`, a file kept for another job is refused (an event cannot point elsewhere)."""
        return await self._db.blobs.local(ref, job_id=job_id)

    def watch(self, topic: str) -> Watch:
        """A wake-up for "jobs" (work to claim) or "events" (outbox news); create it before polling."""
        return self._db.watch(topic)

    # -- adapters' side ----------------------------------------------------------------------
    async def enqueue(self, new: NewJob, limits: Limits, quota: Quota | None = None) -> Job:
        """Validate and queue a job. Bad input raises an InputError and writes nothing.

        With a `quota`, the user's active and daily job counts are checked inside the insert's
        transaction: a refusal raises TooManyActiveJobs or DailyQuotaReached.
        """
        if new.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, not {new.platform!r}")
        prompts = check_prompts(list(new.prompts), limits)
        info = check_photo(new.photo, limits)
        preset = new.settings.get("preset") or None
        now = self._clock()
        async with self._db.tx() as s:
            if quota is not None:
                await self._check_quota(s, new.platform, str(new.user_id), quota)
            row = await s.fetchone(
                """INSERT INTO jobs (platform, chat_id, user_id, photo_path, photo_sha256, prompts,
                                     settings, meta, preset, created_at, updated_at)
                   VALUES (?, ?, ?, '', '', ?, ?, ?, ?, ?, ?) RETURNING id""",
                new.platform, str(new.chat_id), str(new.user_id), json.dumps(prompts, ensure_ascii=False),
                json.dumps(new.settings), json.dumps(new.meta), None if preset is None else str(preset), now, now)
            job_id = row[0]
            ref, digest = await self._db.blobs.put_photo(s, job_id, new.photo, info.suffix)
            row = await s.fetchone(
                "UPDATE jobs SET photo_path = ?, photo_sha256 = ? WHERE id = ? RETURNING *", ref, digest, job_id)
            s.notify("jobs")
        return Job.from_row(row)

    async def _check_quota(self, s: Session, platform: str, user_id: str, quota: Quota) -> None:
        await self._db.serialize(s, f"quota:{platform}:{user_id}")  # two requests of one user take turns
        rows = await s.fetchall(
            "SELECT id FROM jobs WHERE platform = ? AND user_id = ? AND state IN ('queued', 'running') ORDER BY id",
            platform, user_id)
        active = [r[0] for r in rows]
        if len(active) >= quota.max_active_jobs:
            raise TooManyActiveJobs(active, quota.max_active_jobs)
        (count,) = await s.fetchone(
            "SELECT COUNT(*) FROM jobs WHERE platform = ? AND user_id = ? AND created_at >= ?",
            platform, user_id, quota.since)
        if count >= quota.max_per_day:
            raise DailyQuotaReached(int(count), quota.max_per_day)

    async def get_job(self, job_id: int) -> Job:
        row = await self._db.fetchone("SELECT * FROM jobs WHERE id = ?", job_id)
        if row is None:
            raise JobNotFound(f"no job #{job_id}")
        return Job.from_row(row)

    async def list_jobs(self, states: Iterable[str] | None = None, limit: int = 50) -> list[Job]:
        if states:
            states = tuple(states)
            marks = ",".join("?" * len(states))
            rows = await self._db.fetchall(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id LIMIT ?", *states, limit)
        else:
            rows = await self._db.fetchall("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", limit)
        return [Job.from_row(r) for r in rows]

    async def jobs_for_user(self, platform: str, user_id: str, *, active_only: bool = False) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE platform = ? AND user_id = ?"
        if active_only:
            sql += " AND state IN ('queued', 'running')"
        rows = await self._db.fetchall(sql + " ORDER BY id DESC LIMIT 20", platform, str(user_id))
        return [Job.from_row(r) for r in rows]

    async def count_since(self, platform: str, user_id: str, since: float) -> int:
        """How many jobs a user created since a time (for per-day limits)."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM jobs WHERE platform = ? AND user_id = ? AND created_at >= ?",
            platform, str(user_id), since)
        return int(row[0])

    async def position(self, job_id: int) -> int | None:
        """1-based place among queued jobs, 0 while running, None once finished."""
        job = await self.get_job(job_id)
        if job.state == "running":
            return 0
        if job.state != "queued":
            return None
        row = await self._db.fetchone("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND id <= ?", job_id)
        return int(row[0])

    async def segments_ahead(self, job_id: int) -> int:
        """Segments still to generate before this job's last segment is done (for an ETA)."""
        row = await self._db.fetchone(
            f"""SELECT COALESCE(SUM({self._db.json_len('j.prompts')}
                        - (SELECT COUNT(*) FROM segments s WHERE s.job_id = j.id)), 0)
                FROM jobs j WHERE j.state IN ('queued', 'running') AND j.id <= ?""", job_id)
        return int(row[0])

    async def set_status_message(self, job_id: int, message_id: str) -> None:
        async with self._db.tx() as s:
            await s.execute("UPDATE jobs SET status_message_id = ? WHERE id = ?", str(message_id), job_id)

    async def cancel(self, job_id: int, *, by_user: str | None = None, is_admin: bool = False) -> Job:
        """Cancel a queued job at once; flag a running one so its worker stops at the next step."""
        async with self._db.tx() as s:
            row = await s.fetchone(f"SELECT * FROM jobs WHERE id = ?{self._db.for_update}", job_id)
            if row is None:
                raise JobNotFound(f"no job #{job_id}")
            job = Job.from_row(row)
            if by_user is not None and not is_admin and job.user_id != str(by_user):
                raise NotAllowed(f"job #{job_id} belongs to someone else; only its owner or an admin may cancel it")
            now = self._clock()
            if job.state == "queued":
                row = await s.fetchone(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?, updated_at = ? WHERE id = ? RETURNING *",
                    now, now, job_id)
                job = Job.from_row(row)
                await self._emit(s, job, "cancelled", {"segments_done": 0})
                await self._emit_positions(s)
            elif job.state == "running":
                row = await s.fetchone(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? RETURNING *", now, job_id)
                job = Job.from_row(row)
        return job

    # -- outbox ----------------------------------------------------------------------------
    async def pending_events(self, platform: str, limit: int = 100, *, job_id: int | None = None) -> list[Event]:
        """Undelivered events of one platform (optionally one job), oldest first."""
        if job_id is None:
            rows = await self._db.fetchall(
                "SELECT * FROM events WHERE platform = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
                platform, limit)
        else:
            rows = await self._db.fetchall(
                "SELECT * FROM events WHERE platform = ? AND job_id = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
                platform, job_id, limit)
        return [Event.from_row(r) for r in rows]

    async def mark_delivered(self, event_id: int, message_id: str | None = None) -> bool:
        """Mark an event delivered. Returns False if it already was (so it is never sent twice)."""
        async with self._db.tx() as s:
            changed = await s.execute(
                "UPDATE events SET delivered_at = ?, message_id = ? WHERE id = ? AND delivered_at IS NULL",
                self._clock(), None if message_id is None else str(message_id), event_id)
        return changed == 1

    async def events_for_job(self, job_id: int) -> list[Event]:
        rows = await self._db.fetchall("SELECT * FROM events WHERE job_id = ? ORDER BY id", job_id)
        return [Event.from_row(r) for r in rows]

    async def segments(self, job_id: int) -> list[Segment]:
        rows = await self._db.fetchall("SELECT * FROM segments WHERE job_id = ? ORDER BY idx", job_id)
        return [Segment.from_row(r) for r in rows]


__all__ = ["JobQueue", "WorkerId", "WorkerInfo", "WorkerStatus", "ACTIVE_STATES", "SCHEMA_VERSION"]
