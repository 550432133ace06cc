"""User data's lifetime: finished jobs' rows and files go after `SVIBOT_RETENTION_DAYS`, and a user's
own jobs go at once when they ask (`/forget`). Mixed into `JobQueue`.

Rows go in one transaction (segments, events and PostgreSQL's kept files follow their job through
ON DELETE CASCADE); files go after the commit, so a crash in between leaves only files without a
row, never a row pointing at a deleted file.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .config import QueueConfig
from .db import Database
from .pg_blobs import job_blob_name

FINISHED = ("done", "failed", "cancelled")


@dataclass
class Deleted:
    jobs: list[int] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


class RetentionVerbs:
    _db: Database
    config: QueueConfig
    _clock: Callable[[], float]

    async def purge_finished(self, older_than_s: float) -> Deleted:
        """Delete jobs that finished more than `older_than_s` seconds ago, with their files."""
        rows = await self._db.fetchall(
            "SELECT id FROM jobs j WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < ? "
            # a story is never deleted before its chat got it
            "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.job_id = j.id AND e.delivered_at IS NULL) ORDER BY id",
            self._clock() - older_than_s)
        return await self.delete_jobs([r[0] for r in rows])

    async def forget_user(self, platform: str, user_id: str) -> Deleted:
        """Delete every job of one user on one platform, running ones too (their worker loses the
        lease at its next step and stops), with all their files, their settings and their refused stories."""
        rows = await self._db.fetchall(
            "SELECT id FROM jobs WHERE platform = ? AND user_id = ? ORDER BY id", platform, str(user_id))
        deleted = await self.delete_jobs([r[0] for r in rows])
        async with self._db.tx() as s:
            # their story defaults are theirs too
            await s.execute("DELETE FROM user_settings WHERE platform = ? AND user_id = ?", platform, str(user_id))
            # a refusal row keeps the user's id and the words it matched
            await s.execute("DELETE FROM refusals WHERE platform = ? AND user_id = ?", platform, str(user_id))
        return deleted

    async def delete_jobs(self, job_ids: Iterable[int]) -> Deleted:
        job_ids = list(job_ids)
        out = Deleted()
        if not job_ids:
            return out
        refs: set[str] = set()
        async with self._db.tx() as s:
            for job_id in job_ids:
                job = await s.fetchone(f"SELECT * FROM jobs WHERE id = ?{self._db.for_update}", job_id)
                if job is None:
                    continue
                job = dict(job)
                for seg in await s.fetchall("SELECT video_path, carry_path FROM segments WHERE job_id = ?", job_id):
                    refs.update(r for r in seg if r)
                refs.update(r for r in (job["final_path"],) if r)
                await s.execute("DELETE FROM events WHERE job_id = ?", job_id)
                await s.execute("DELETE FROM segments WHERE job_id = ?", job_id)
                await s.execute("DELETE FROM jobs WHERE id = ?", job_id)
                # A content-addressed photo (SQLite) may be shared by another job of the same photo.
                (others,) = await s.fetchone("SELECT COUNT(*) FROM jobs WHERE photo_path = ?", job["photo_path"])
                if not others and job["photo_path"]:
                    refs.add(job["photo_path"])
                out.jobs.append(job_id)
        root = self.config.files_root
        for job_id in out.jobs:  # the job's folder: segments, carries, the story, cached copies
            folder = root / job_blob_name(job_id, "")
            if folder.is_dir():
                out.files.extend(p for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder, ignore_errors=True)
        for ref in refs:
            if ".." in Path(ref).parts:
                continue  # a stored name may never reach outside the data dir
            path = Path(ref) if Path(ref).is_absolute() else root / ref
            if path.is_file():
                path.unlink(missing_ok=True)
                out.files.append(path)
        return out
