"""Frozen settings for the queue and the input limits, built once by the CLI."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """What one story may ask for. Adapters and the CLI check input against these."""

    max_segments: int = 10  # ~50 s of video; more makes a single job hog a free T4 for an hour
    max_prompt_chars: int = 500  # UMT5 sees 512 tokens; longer text is truncated by the model anyway
    max_photo_bytes: int = 20 * 1024 * 1024  # Telegram's cloud Bot API download limit
    max_photo_pixels: int = 40_000_000  # 40 MP; bigger is a decompression-bomb risk and never needed
    min_photo_side: int = 64  # below this the VAE sees less than one latent row


@dataclass(frozen=True)
class Quota:
    """Per-user limits that `JobQueue.enqueue` checks in the same transaction as the insert,
    so simultaneous requests cannot all pass the check before any of them is queued."""

    max_active_jobs: int  # queued + running jobs of the user on this platform
    max_per_day: int  # jobs created since `since`
    since: float  # start of the counted day (epoch seconds)


@dataclass(frozen=True)
class QueueConfig:
    db_path: Path  # the SQLite file, used when `database_url` is unset
    lease_seconds: float = 120.0  # a T4 step takes ~70 s; heartbeats run every lease/4
    max_attempts: int = 3  # crashes tolerated per job before it is failed
    worker_online_seconds: float = 90.0  # a worker heartbeat older than this means "offline"
    database_url: str | None = None  # postgresql://...: share the queue between machines
    cache_root: Path | None = None  # where PostgreSQL-kept files are cached; default: db_path's folder
    busy_timeout_s: float = 30.0  # SQLite: wait this long for another process's write lock, then back off and retry

    @property
    def files_root(self) -> Path:
        return Path(self.cache_root) if self.cache_root is not None else Path(self.db_path).parent

    def __repr__(self) -> str:  # the URL may carry a password
        from .dburl import redact

        url = None if self.database_url is None else redact(self.database_url)
        return (f"QueueConfig(db_path={self.db_path!r}, lease_seconds={self.lease_seconds}, "
                f"max_attempts={self.max_attempts}, database_url={url!r})")


@dataclass(frozen=True)
class DataDir:
    """Layout of the data directory (`SVIBOT_DATA_DIR`, default ./svibot-data)."""

    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "queue.sqlite3"

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def job_dir(self, job_id: int) -> Path:
        return self.root / "jobs" / f"{job_id:06d}"

    def segment_video(self, job_id: int, index: int) -> Path:
        return self.job_dir(job_id) / f"segment_{index:03d}.mp4"

    def segment_carry(self, job_id: int, index: int) -> Path:
        return self.job_dir(job_id) / f"carry_{index:03d}.pt"

    def story_video(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "story.mp4"
