"""The durable job queue (SQLite through aiosqlite): the only place that writes SQL.

Adapters enqueue jobs and read the outbox; the worker claims jobs, heartbeats its lease
and records segments. Several processes on one host may share the database file.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from .config import Limits, QueueConfig, Quota
from .errors import CorruptDatabase, DailyQuotaReached, JobNotFound, LeaseLost, NotAllowed, TooManyActiveJobs
from .files import store_photo
from .models import ACTIVE_STATES, PLATFORMS, Event, Job, NewJob, Segment, Stats
from .schema import PRAGMAS, check_is_sqlite, migrate
from .validate import check_photo, check_prompts

@dataclass(frozen=True)
class WorkerId:
    """Who holds a lease: a unique owner string plus the host and pid, to spot dead workers."""

    owner: str
    host: str
    pid: int

    @classmethod
    def current(cls) -> "WorkerId":
        host, pid = socket.gethostname(), os.getpid()
        return cls(owner=f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host=host, pid=pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobQueue:
    """Verbs over the queue. Open with `await JobQueue.open(config, photos_dir)`."""

    def __init__(self, db: aiosqlite.Connection, config: QueueConfig, photos_dir: Path,
                 clock: Callable[[], float]) -> None:
        self._db = db
        self.config = config
        self._photos_dir = Path(photos_dir)
        self._clock = clock
        self._write_lock = asyncio.Lock()  # one connection: writers of this process take turns

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    async def open(cls, config: QueueConfig, photos_dir: Path, *,
                   clock: Callable[[], float] = time.time) -> "JobQueue":
        path = Path(config.db_path)
        check_is_sqlite(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None, timeout=30.0)
        db.row_factory = sqlite3.Row
        try:
            await db.execute("PRAGMA busy_timeout=30000")
            for pragma in PRAGMAS:
                await db.execute(pragma)
            await migrate(db, path)
        except sqlite3.DatabaseError as err:
            await db.close()
            raise CorruptDatabase(
                f"{path} is not a usable svibot queue database ({err}). It was left untouched; "
                "move it away or point SVIBOT_DATA_DIR elsewhere."
            ) from err
        except BaseException:
            await db.close()
            raise
        return cls(db, config, photos_dir, clock)

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> "JobQueue":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """The one write path: BEGIN IMMEDIATE, commit, or roll back on any error."""
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

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
        photo_path, digest = store_photo(self._photos_dir, new.photo, info.suffix)
        now = self._clock()
        async with self._tx() as db:
            if quota is not None:
                await self._check_quota(db, new.platform, str(new.user_id), quota)
            cur = await db.execute(
                """INSERT INTO jobs (platform, chat_id, user_id, photo_path, photo_sha256, prompts,
                                     settings, meta, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *""",
                (new.platform, str(new.chat_id), str(new.user_id), str(photo_path), digest,
                 json.dumps(prompts, ensure_ascii=False), json.dumps(new.settings),
                 json.dumps(new.meta), now, now),
            )
            row = await cur.fetchone()
        return Job.from_row(row)

    async def get_job(self, job_id: int) -> Job:
        cur = await self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = await cur.fetchone()
        if row is None:
            raise JobNotFound(f"no job #{job_id}")
        return Job.from_row(row)

    async def list_jobs(self, states: Iterable[str] | None = None, limit: int = 50) -> list[Job]:
        if states:
            states = tuple(states)
            marks = ",".join("?" * len(states))
            cur = await self._db.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id LIMIT ?", (*states, limit))
        else:
            cur = await self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [Job.from_row(r) for r in await cur.fetchall()]

    async def jobs_for_user(self, platform: str, user_id: str, *, active_only: bool = False) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE platform = ? AND user_id = ?"
        if active_only:
            sql += " AND state IN ('queued', 'running')"
        cur = await self._db.execute(sql + " ORDER BY id DESC LIMIT 20", (platform, str(user_id)))
        return [Job.from_row(r) for r in await cur.fetchall()]

    async def count_since(self, platform: str, user_id: str, since: float) -> int:
        """How many jobs a user created since a time (for per-day limits)."""
        cur = await self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE platform = ? AND user_id = ? AND created_at >= ?",
            (platform, str(user_id), since))
        return (await cur.fetchone())[0]

    async def position(self, job_id: int) -> int | None:
        """1-based place among queued jobs, 0 while running, None once finished."""
        job = await self.get_job(job_id)
        if job.state == "running":
            return 0
        if job.state != "queued":
            return None
        cur = await self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND id <= ?", (job_id,))
        return (await cur.fetchone())[0]

    async def segments_ahead(self, job_id: int) -> int:
        """Segments still to generate before this job's last segment is done (for an ETA)."""
        cur = await self._db.execute(
            """SELECT COALESCE(SUM(json_array_length(j.prompts)
                        - (SELECT COUNT(*) FROM segments s WHERE s.job_id = j.id)), 0)
               FROM jobs j WHERE j.state IN ('queued', 'running') AND j.id <= ?""", (job_id,))
        return (await cur.fetchone())[0]

    async def set_status_message(self, job_id: int, message_id: str) -> None:
        async with self._tx() as db:
            await db.execute("UPDATE jobs SET status_message_id = ? WHERE id = ?", (str(message_id), job_id))

    async def cancel(self, job_id: int, *, by_user: str | None = None, is_admin: bool = False) -> Job:
        """Cancel a queued job at once; flag a running one so its worker stops at the next step."""
        async with self._tx() as db:
            cur = await db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
            row = await cur.fetchone()
            if row is None:
                raise JobNotFound(f"no job #{job_id}")
            job = Job.from_row(row)
            if by_user is not None and not is_admin and job.user_id != str(by_user):
                raise NotAllowed(f"job #{job_id} belongs to someone else; only its owner or an admin may cancel it")
            now = self._clock()
            if job.state == "queued":
                cur = await db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?, updated_at = ? WHERE id = ? RETURNING *",
                    (now, now, job_id))
                job = Job.from_row(await cur.fetchone())
                await self._emit(db, job, "cancelled", {"segments_done": 0})
                await self._emit_positions(db)
            elif job.state == "running":
                cur = await db.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? RETURNING *", (now, job_id))
                job = Job.from_row(await cur.fetchone())
        return job

    # -- outbox ----------------------------------------------------------------------------
    async def pending_events(self, platform: str, limit: int = 100, *, job_id: int | None = None) -> list[Event]:
        """Undelivered events of one platform (optionally one job), oldest first."""
        if job_id is None:
            cur = await self._db.execute(
                "SELECT * FROM events WHERE platform = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
                (platform, limit))
        else:
            cur = await self._db.execute(
                "SELECT * FROM events WHERE platform = ? AND job_id = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
                (platform, job_id, limit))
        return [Event.from_row(r) for r in await cur.fetchall()]

    async def mark_delivered(self, event_id: int, message_id: str | None = None) -> bool:
        """Mark an event delivered. Returns False if it already was (so it is never sent twice)."""
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE events SET delivered_at = ?, message_id = ? WHERE id = ? AND delivered_at IS NULL",
                (self._clock(), None if message_id is None else str(message_id), event_id))
            return cur.rowcount == 1

    async def events_for_job(self, job_id: int) -> list[Event]:
        cur = await self._db.execute("SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,))
        return [Event.from_row(r) for r in await cur.fetchall()]

    # -- worker's side -----------------------------------------------------------------------
    async def claim(self, worker: WorkerId) -> Job | None:
        """Atomically lease the oldest queued job to `worker`, or return None."""
        now = self._clock()
        async with self._tx() as db:
            cur = await db.execute(
                """UPDATE jobs SET state = 'running', lease_owner = ?, lease_host = ?, lease_pid = ?,
                          lease_expires = ?, started_at = COALESCE(started_at, ?), updated_at = ?
                   WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1)
                   RETURNING *""",
                (worker.owner, worker.host, worker.pid, now + self.config.lease_seconds, now, now))
            row = await cur.fetchone()
            if row is None:
                return None
            await self._emit_positions(db)
        return Job.from_row(row)

    async def heartbeat(self, job_id: int, worker: WorkerId) -> bool:
        """Extend the lease. Returns True when the job's cancellation was requested."""
        now = self._clock()
        async with self._tx() as db:
            cur = await db.execute(
                """UPDATE jobs SET lease_expires = ?, updated_at = ?
                   WHERE id = ? AND state = 'running' AND lease_owner = ? RETURNING cancel_requested""",
                (now + self.config.lease_seconds, now, job_id, worker.owner))
            row = await cur.fetchone()
        if row is None:
            raise LeaseLost(f"job #{job_id} is no longer leased to {worker.owner}")
        return bool(row[0])

    async def record_progress(self, job_id: int, worker: WorkerId, payload: dict[str, Any]) -> None:
        async with self._tx() as db:
            job = await self._owned(db, job_id, worker)
            await self._emit(db, job, "progress", payload)

    async def record_segment(self, job_id: int, worker: WorkerId, *, index: int, prompt: str,
                             video_path: Path, carry_path: Path | None, num_frames: int,
                             duration_s: float, gen_seconds: float) -> Segment:
        """Record a finished segment (its files already written) and emit "segment ready"."""
        now = self._clock()
        async with self._tx() as db:
            job = await self._owned(db, job_id, worker)
            cur = await db.execute(
                """INSERT INTO segments (job_id, idx, prompt, video_path, carry_path, num_frames,
                                         duration_s, gen_seconds, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *""",
                (job_id, index, prompt, str(video_path), None if carry_path is None else str(carry_path),
                 num_frames, duration_s, gen_seconds, now))
            seg = Segment.from_row(await cur.fetchone())
            await self._emit(db, job, "segment", {
                "index": index, "num_segments": job.num_segments, "prompt": prompt,
                "video_path": str(video_path), "num_frames": num_frames, "duration_s": duration_s})
        return seg

    async def segments(self, job_id: int) -> list[Segment]:
        cur = await self._db.execute("SELECT * FROM segments WHERE job_id = ? ORDER BY idx", (job_id,))
        return [Segment.from_row(r) for r in await cur.fetchall()]

    async def complete(self, job_id: int, worker: WorkerId, final_path: Path,
                       payload: dict[str, Any] | None = None) -> Job:
        return await self._finish(job_id, worker, "done", final_path=str(final_path),
                                  payload={"final_path": str(final_path), **(payload or {})})

    async def fail(self, job_id: int, worker: WorkerId, error: str) -> Job:
        return await self._finish(job_id, worker, "failed", error=error, payload={"error": error})

    async def mark_cancelled(self, job_id: int, worker: WorkerId, segments_done: int) -> Job:
        return await self._finish(job_id, worker, "cancelled", payload={"segments_done": segments_done})

    async def release(self, job_id: int, worker: WorkerId) -> None:
        """Give a running job back to the queue on clean shutdown, without counting an attempt."""
        async with self._tx() as db:
            await db.execute(
                """UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_host = NULL, lease_pid = NULL,
                          lease_expires = NULL, updated_at = ?
                   WHERE id = ? AND state = 'running' AND lease_owner = ?""",
                (self._clock(), job_id, worker.owner))

    async def reap_expired(self) -> list[int]:
        """Requeue jobs whose lease expired (their worker died); fail those out of attempts."""
        cur = await self._db.execute(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires < ?", (self._clock(),))
        return await self._requeue_lost([r[0] for r in await cur.fetchall()])

    async def reclaim_dead_local(self, worker: WorkerId,
                                 alive: Callable[[int], bool] = _pid_alive) -> list[int]:
        """Requeue at once jobs leased by a dead process on this host, without waiting for expiry."""
        cur = await self._db.execute(
            "SELECT id, lease_pid FROM jobs WHERE state = 'running' AND lease_host = ? AND lease_owner != ?",
            (worker.host, worker.owner))
        dead = [r[0] for r in await cur.fetchall() if r[1] is None or not alive(r[1])]
        return await self._requeue_lost(dead)

    # -- liveness and stats ------------------------------------------------------------------
    async def worker_seen(self, worker: WorkerId, preset: str | None = None) -> None:
        now = self._clock()
        async with self._tx() as db:
            await db.execute(
                """INSERT INTO workers (worker_id, host, pid, preset, started_at, seen_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (worker_id) DO UPDATE SET seen_at = excluded.seen_at, preset = excluded.preset""",
                (worker.owner, worker.host, worker.pid, preset, now, now))

    async def worker_gone(self, worker: WorkerId) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM workers WHERE worker_id = ?", (worker.owner,))

    async def stats(self) -> Stats:
        cur = await self._db.execute(
            "SELECT SUM(state = 'queued'), SUM(state = 'running') FROM jobs WHERE state IN ('queued', 'running')")
        queued, running = await cur.fetchone()
        cur = await self._db.execute(
            "SELECT AVG(gen_seconds) FROM (SELECT gen_seconds FROM segments ORDER BY created_at DESC LIMIT 20)")
        (sps,) = await cur.fetchone()
        cur = await self._db.execute(
            "SELECT COUNT(*) FROM workers WHERE seen_at >= ?", (self._clock() - self.config.worker_online_seconds,))
        (online,) = await cur.fetchone()
        return Stats(queued=queued or 0, running=running or 0, seconds_per_segment=sps, workers_online=online)

    # -- internals ---------------------------------------------------------------------------
    async def _check_quota(self, db: aiosqlite.Connection, platform: str, user_id: str, quota: Quota) -> None:
        cur = await db.execute(
            "SELECT id FROM jobs WHERE platform = ? AND user_id = ? AND state IN ('queued', 'running') ORDER BY id",
            (platform, user_id))
        active = [r[0] for r in await cur.fetchall()]
        if len(active) >= quota.max_active_jobs:
            raise TooManyActiveJobs(active, quota.max_active_jobs)
        cur = await db.execute(
            "SELECT COUNT(*) FROM jobs WHERE platform = ? AND user_id = ? AND created_at >= ?",
            (platform, user_id, quota.since))
        (count,) = await cur.fetchone()
        if count >= quota.max_per_day:
            raise DailyQuotaReached(count, quota.max_per_day)

    async def _owned(self, db: aiosqlite.Connection, job_id: int, worker: WorkerId) -> Job:
        cur = await db.execute(
            "SELECT * FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?", (job_id, worker.owner))
        row = await cur.fetchone()
        if row is None:
            raise LeaseLost(f"job #{job_id} is no longer leased to {worker.owner}")
        return Job.from_row(row)

    async def _finish(self, job_id: int, worker: WorkerId, state: str, *, error: str | None = None,
                      final_path: str | None = None, payload: dict[str, Any]) -> Job:
        now = self._clock()
        async with self._tx() as db:
            await self._owned(db, job_id, worker)
            cur = await db.execute(
                """UPDATE jobs SET state = ?, error = ?, final_path = ?, finished_at = ?, updated_at = ?,
                          lease_owner = NULL, lease_host = NULL, lease_pid = NULL, lease_expires = NULL
                   WHERE id = ? RETURNING *""",
                (state, error, final_path, now, now, job_id))
            job = Job.from_row(await cur.fetchone())
            await self._emit(db, job, state, payload)
        return job

    async def _requeue_lost(self, job_ids: list[int]) -> list[int]:
        if not job_ids:
            return []
        now = self._clock()
        async with self._tx() as db:
            for job_id in job_ids:
                cur = await db.execute(
                    """UPDATE jobs SET attempts = attempts + 1, lease_owner = NULL, lease_host = NULL,
                              lease_pid = NULL, lease_expires = NULL, updated_at = ?, state = 'queued'
                       WHERE id = ? AND state = 'running' RETURNING *""", (now, job_id))
                row = await cur.fetchone()
                if row is None:
                    continue
                job = Job.from_row(row)
                if job.attempts >= self.config.max_attempts:
                    error = (f"the worker stopped {job.attempts} times while running this job "
                             f"(limit {self.config.max_attempts}); giving up")
                    cur = await db.execute(
                        "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ? RETURNING *",
                        (error, now, job_id))
                    job = Job.from_row(await cur.fetchone())
                    await self._emit(db, job, "failed", {"error": error})
            await self._emit_positions(db)
        return job_ids

    async def _emit(self, db: aiosqlite.Connection, job: Job, kind: str, payload: dict[str, Any]) -> None:
        await db.execute(
            "INSERT INTO events (job_id, platform, chat_id, kind, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (job.id, job.platform, job.chat_id, kind, json.dumps({"job_id": job.id, **payload}), self._clock()))

    async def _emit_positions(self, db: aiosqlite.Connection) -> None:
        """Tell every waiting job its new place in line."""
        cur = await db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id")
        for place, row in enumerate(await cur.fetchall(), start=1):
            await self._emit(db, Job.from_row(row), "position", {"position": place})


__all__ = ["JobQueue", "WorkerId", "ACTIVE_STATES"]
