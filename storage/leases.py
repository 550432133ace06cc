"""The worker's side of the queue: claims, leases and heartbeats, segment records, finishing, and
giving lost jobs back. Written once over `Database`, so SQLite and PostgreSQL behave the same.

On SQLite a transaction holds the whole database's write lock; on PostgreSQL the statements that
must not race lock their job row (`FOR UPDATE`) and competing claimers skip each other's rows.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from .config import QueueConfig
from .db import Database, Session
from .errors import LeaseLost
from .models import Job, Segment, Stats
from .workers import WorkerId, WorkerInfo, WorkerStatus, pid_alive

_CLEAR_LEASE = "lease_owner = NULL, lease_host = NULL, lease_pid = NULL, lease_expires = NULL"
FORGET_WORKERS_AFTER_S = 24 * 3600.0  # offline workers stay listed this long


class LeaseVerbs:
    """Mixed into `JobQueue`; needs `_db`, `config` and `_clock`."""

    _db: Database
    config: QueueConfig
    _clock: Callable[[], float]

    async def claim(self, worker: WorkerId, *, presets: Collection[str] | None = None,
                    job_id: int | None = None) -> Job | None:
        """Atomically lease the oldest queued job to `worker`, or return None.

        `presets`: the presets this worker can serve (what fits its VRAM); jobs that name no preset
        get the worker's default. None serves every job. `job_id`: lease only that job (`svibot story`
        runs its own job and leaves older ones to `svibot worker`).
        """
        where, args = "state = 'queued'", []
        if presets is not None:
            presets = sorted(presets)
            where += f" AND (preset IS NULL OR preset IN ({','.join('?' * len(presets))}))" if presets \
                else " AND preset IS NULL"
            args = presets
        if job_id is not None:
            where += " AND id = ?"
            args = [*args, job_id]
        now = self._clock()
        async with self._db.tx() as s:
            row = await s.fetchone(
                f"""UPDATE jobs SET state = 'running', lease_owner = ?, lease_host = ?, lease_pid = ?,
                           lease_expires = ?, started_at = COALESCE(started_at, ?), updated_at = ?
                    WHERE id = (SELECT id FROM jobs WHERE {where} ORDER BY id LIMIT 1{self._db.skip_locked})
                    RETURNING *""",
                worker.owner, worker.host, worker.pid, now + self.config.lease_seconds, now, now, *args)
            if row is None:
                return None
            await self._emit_positions(s)
        return Job.from_row(row)

    async def heartbeat(self, job_id: int, worker: WorkerId) -> bool:
        """Extend the lease. Returns True when the job's cancellation was requested."""
        now = self._clock()
        async with self._db.tx() as s:
            row = await s.fetchone(
                """UPDATE jobs SET lease_expires = ?, updated_at = ?
                   WHERE id = ? AND state = 'running' AND lease_owner = ? RETURNING cancel_requested""",
                now + self.config.lease_seconds, now, job_id, worker.owner)
        if row is None:
            raise LeaseLost(f"job #{job_id} is no longer leased to {worker.owner}")
        return bool(row[0])

    async def record_progress(self, job_id: int, worker: WorkerId, payload: dict[str, Any]) -> None:
        async with self._db.tx() as s:
            job = await self._owned(s, job_id, worker)
            await self._emit(s, job, "progress", payload)

    async def record_segment(self, job_id: int, worker: WorkerId, *, index: int, prompt: str,
                             video_path: Path, carry_path: Path | None, num_frames: int,
                             duration_s: float, gen_seconds: float) -> Segment:
        """Record a finished segment (its files already written locally; the database keeps them
        where workers share no disk) and emit "segment ready", all in one transaction."""
        now = self._clock()
        async with self._db.tx() as s:
            job = await self._owned(s, job_id, worker)
            video_ref = await self._db.blobs.put_file(s, job_id, Path(video_path))
            carry_ref = None if carry_path is None else await self._db.blobs.put_file(s, job_id, Path(carry_path))
            row = await s.fetchone(
                """INSERT INTO segments (job_id, idx, prompt, video_path, carry_path, num_frames,
                                         duration_s, gen_seconds, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *""",
                job_id, index, prompt, video_ref, carry_ref, num_frames, duration_s, gen_seconds, now)
            seg = Segment.from_row(row)
            await self._emit(s, job, "segment", {
                "index": index, "num_segments": job.num_segments, "prompt": prompt,
                "video_path": video_ref, "num_frames": num_frames, "duration_s": duration_s})
        return seg

    async def complete(self, job_id: int, worker: WorkerId, final_path: Path,
                       payload: dict[str, Any] | None = None) -> Job:
        return await self._finish(job_id, worker, "done", final_file=Path(final_path), payload=payload or {})

    async def fail(self, job_id: int, worker: WorkerId, error: str) -> Job:
        return await self._finish(job_id, worker, "failed", error=error, payload={"error": error})

    async def mark_cancelled(self, job_id: int, worker: WorkerId, segments_done: int) -> Job:
        return await self._finish(job_id, worker, "cancelled", payload={"segments_done": segments_done})

    async def release(self, job_id: int, worker: WorkerId) -> None:
        """Give a running job back to the queue on clean shutdown, without counting an attempt."""
        async with self._db.tx() as s:
            changed = await s.execute(
                f"UPDATE jobs SET state = 'queued', {_CLEAR_LEASE}, updated_at = ? "
                "WHERE id = ? AND state = 'running' AND lease_owner = ?",
                self._clock(), job_id, worker.owner)
            if changed:
                s.notify("jobs")

    async def pause(self, job_id: int, worker: WorkerId, reason: str) -> Job:
        """Give a job back to the queue because this machine cannot go on (its disk is full), and
        tell its chat why: no attempt is counted, the next worker start resumes it."""
        async with self._db.tx() as s:
            await self._owned(s, job_id, worker)
            row = await s.fetchone(
                f"UPDATE jobs SET state = 'queued', {_CLEAR_LEASE}, updated_at = ? WHERE id = ? RETURNING *",
                self._clock(), job_id)
            job = Job.from_row(row)
            done = await s.fetchone("SELECT COUNT(*) FROM segments WHERE job_id = ?", job_id)
            # A status event (the schema's event kinds are fixed): the chat's status message says why.
            await self._emit(s, job, "progress", {"paused": reason, "segments_done": int(done[0])})
            s.notify("jobs")
        return job

    async def drop_segments(self, job_id: int, worker: WorkerId, from_index: int) -> int:
        """Forget segments `from_index`.. of a job whose files turned out damaged, so they are made
        again; returns how many rows went."""
        async with self._db.tx() as s:
            await self._owned(s, job_id, worker)
            return await s.execute("DELETE FROM segments WHERE job_id = ? AND idx >= ?", job_id, from_index)

    async def reap_expired(self) -> list[int]:
        """Requeue jobs whose lease expired (their worker died); fail those out of attempts."""
        now = self._clock()
        rows = await self._db.fetchall(
            "SELECT id, lease_owner FROM jobs WHERE state = 'running' AND lease_expires < ? ORDER BY id", now)
        return await self._requeue_lost([(r[0], r[1]) for r in rows], expired_before=now)

    async def reclaim_dead_local(self, worker: WorkerId,
                                 alive: Callable[[int], bool] = pid_alive) -> list[int]:
        """Requeue at once jobs leased by a dead process on this host, without waiting for expiry."""
        rows = await self._db.fetchall(
            "SELECT id, lease_pid, lease_owner FROM jobs WHERE state = 'running' AND lease_host = ? "
            "AND lease_owner != ? ORDER BY id", worker.host, worker.owner)
        return await self._requeue_lost([(r[0], r[2]) for r in rows if r[1] is None or not alive(r[1])])

    # -- liveness and stats ------------------------------------------------------------------
    async def register_worker(self, worker: WorkerId, info: WorkerInfo) -> None:
        """Say who this worker is (listed by `svibot workers` and `/queue`); forget long-gone ones."""
        now = self._clock()
        async with self._db.tx() as s:
            await s.execute("DELETE FROM workers WHERE seen_at < ?", now - FORGET_WORKERS_AFTER_S)
            await s.execute(
                """INSERT INTO workers (worker_id, host, pid, preset, gpu, vram_gib, ram_gib, started_at, seen_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (worker_id) DO UPDATE SET preset = excluded.preset, gpu = excluded.gpu,
                       vram_gib = excluded.vram_gib, ram_gib = excluded.ram_gib, seen_at = excluded.seen_at""",
                worker.owner, worker.host, worker.pid, info.preset, info.gpu, info.vram_gib, info.ram_gib,
                now, now)

    async def worker_seen(self, worker: WorkerId, preset: str | None = None) -> None:
        now = self._clock()
        async with self._db.tx() as s:
            await s.execute(
                """INSERT INTO workers (worker_id, host, pid, preset, started_at, seen_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (worker_id) DO UPDATE SET seen_at = excluded.seen_at,
                       preset = COALESCE(excluded.preset, workers.preset)""",
                worker.owner, worker.host, worker.pid, preset, now, now)

    async def worker_gone(self, worker: WorkerId) -> None:
        async with self._db.tx() as s:
            await s.execute("DELETE FROM workers WHERE worker_id = ?", worker.owner)

    async def workers(self) -> list[WorkerStatus]:
        """Every registered worker, oldest first, with the job it holds and how far that job is."""
        rows = await self._db.fetchall(
            f"""SELECT w.*, j.id AS job_id, {self._db.json_len('j.prompts')} AS num_segments,
                       (SELECT COUNT(*) FROM segments s WHERE s.job_id = j.id) AS segments_done
                FROM workers w LEFT JOIN jobs j ON j.lease_owner = w.worker_id AND j.state = 'running'
                ORDER BY w.started_at, w.worker_id""")
        online_after = self._clock() - self.config.worker_online_seconds
        out = []
        for r in rows:
            d = dict(r)
            out.append(WorkerStatus(
                worker_id=d["worker_id"], host=d["host"], pid=d["pid"], preset=d["preset"], gpu=d["gpu"],
                vram_gib=d["vram_gib"], ram_gib=d["ram_gib"], started_at=d["started_at"], seen_at=d["seen_at"],
                online=d["seen_at"] >= online_after, job_id=d["job_id"],
                segments_done=None if d["job_id"] is None else int(d["segments_done"]),
                num_segments=None if d["job_id"] is None else int(d["num_segments"])))
        return out

    async def stats(self) -> Stats:
        row = await self._db.fetchone(
            "SELECT SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END) FROM jobs WHERE state IN ('queued', 'running')")
        queued, running = row[0], row[1]
        (sps,) = await self._db.fetchone(
            "SELECT AVG(gen_seconds) FROM (SELECT gen_seconds FROM segments ORDER BY created_at DESC LIMIT 20) r")
        (online,) = await self._db.fetchone(
            "SELECT COUNT(*) FROM workers WHERE seen_at >= ?", self._clock() - self.config.worker_online_seconds)
        return Stats(queued=int(queued or 0), running=int(running or 0),
                     seconds_per_segment=None if sps is None else float(sps), workers_online=int(online))

    # -- internals ---------------------------------------------------------------------------
    async def _owned(self, s: Session, job_id: int, worker: WorkerId) -> Job:
        """The job, if `worker` still holds its lease; locked until the transaction ends."""
        row = await s.fetchone(
            f"SELECT * FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?{self._db.for_update}",
            job_id, worker.owner)
        if row is None:
            raise LeaseLost(f"job #{job_id} is no longer leased to {worker.owner}")
        return Job.from_row(row)

    async def _finish(self, job_id: int, worker: WorkerId, state: str, *, error: str | None = None,
                      final_file: Path | None = None, payload: dict[str, Any]) -> Job:
        now = self._clock()
        async with self._db.tx() as s:
            await self._owned(s, job_id, worker)
            final_ref = None
            if final_file is not None:
                final_ref = await self._db.blobs.put_file(s, job_id, final_file)
                payload = {"final_path": final_ref, **payload}
            row = await s.fetchone(
                f"""UPDATE jobs SET state = ?, error = ?, final_path = ?, finished_at = ?, updated_at = ?,
                           {_CLEAR_LEASE} WHERE id = ? RETURNING *""",
                state, error, final_ref, now, now, job_id)
            job = Job.from_row(row)
            await self._emit(s, job, state, payload)
        return job

    async def _requeue_lost(self, leases: list[tuple[int, str]], *, expired_before: float | None = None) -> list[int]:
        """Requeue each (job, owner) still held by that owner; another process may have done it first."""
        if not leases:
            return []
        now = self._clock()
        requeued = []
        async with self._db.tx() as s:
            for job_id, owner in leases:
                sql = (f"UPDATE jobs SET attempts = attempts + 1, {_CLEAR_LEASE}, updated_at = ?, state = 'queued' "
                       "WHERE id = ? AND state = 'running' AND lease_owner = ?")
                args: list[Any] = [now, job_id, owner]
                if expired_before is not None:  # a heartbeat that landed meanwhile keeps the lease
                    sql += " AND lease_expires < ?"
                    args.append(expired_before)
                row = await s.fetchone(sql + " RETURNING *", *args)
                if row is None:
                    continue
                requeued.append(job_id)
                job = Job.from_row(row)
                if job.attempts >= self.config.max_attempts:
                    error = (f"the worker stopped {job.attempts} times while running this job "
                             f"(limit {self.config.max_attempts}); giving up")
                    row = await s.fetchone(
                        "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ? RETURNING *",
                        error, now, job_id)
                    await self._emit(s, Job.from_row(row), "failed", {"error": error})
                else:
                    s.notify("jobs")
            if requeued:
                await self._emit_positions(s)
        return requeued

    async def _emit(self, s: Session, job: Job, kind: str, payload: dict[str, Any]) -> None:
        await s.execute(
            "INSERT INTO events (job_id, platform, chat_id, kind, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            job.id, job.platform, job.chat_id, kind, json.dumps({"job_id": job.id, **payload}), self._clock())
        s.notify("events")

    async def _emit_positions(self, s: Session) -> None:
        """Tell every waiting job its new place in line: one statement, however long the line is
        (a round trip per job made claims slow down with the queue's length)."""
        added = await s.execute(
            """INSERT INTO events (job_id, platform, chat_id, kind, payload, created_at)
               SELECT id, platform, chat_id, 'position', '{"job_id": ' || id || ', "position": ' || place || '}', ?
               FROM (SELECT id, platform, chat_id, ROW_NUMBER() OVER (ORDER BY id) AS place
                     FROM jobs WHERE state = 'queued') waiting
               ORDER BY id""", self._clock())
        if added:
            s.notify("events")
