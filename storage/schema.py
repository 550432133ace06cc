"""SQLite: schema statements, forward migrations (versioned with PRAGMA user_version) and the
checks run before a database file is trusted. PostgreSQL's twin is `pg_schema.py`; both keep the
same version numbers."""
from __future__ import annotations

from pathlib import Path

import aiosqlite

from .errors import CorruptDatabase, SchemaTooNew

_SQLITE_MAGIC = b"SQLite format 3\x00"

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)

# Migration N brings a database from user_version N-1 to N. Append only; never edit a shipped one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            platform TEXT NOT NULL CHECK (platform IN ('telegram', 'discord', 'cli')),
            chat_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            photo_path TEXT NOT NULL,
            photo_sha256 TEXT NOT NULL,
            prompts TEXT NOT NULL,
            settings TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_host TEXT,
            lease_pid INTEGER,
            lease_expires REAL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            updated_at REAL NOT NULL,
            error TEXT,
            final_path TEXT,
            status_message_id TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_state_id ON jobs (state, id)",
        "CREATE INDEX IF NOT EXISTS jobs_user ON jobs (platform, user_id, created_at)",
        """CREATE TABLE IF NOT EXISTS segments (
            job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            state TEXT NOT NULL DEFAULT 'done',
            prompt TEXT NOT NULL,
            video_path TEXT NOT NULL,
            carry_path TEXT,
            num_frames INTEGER NOT NULL,
            duration_s REAL NOT NULL,
            gen_seconds REAL NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (job_id, idx)
        )""",
        """CREATE TABLE IF NOT EXISTS events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            platform TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            kind TEXT NOT NULL
                CHECK (kind IN ('position', 'progress', 'segment', 'done', 'failed', 'cancelled')),
            payload TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            delivered_at REAL,
            message_id TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS events_pending ON events (platform, delivered_at, id)",
        """CREATE TABLE IF NOT EXISTS workers (
            worker_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            preset TEXT,
            started_at REAL NOT NULL,
            seen_at REAL NOT NULL
        )""",
    ),
    (
        # 2: claims filtered by preset, and workers that say what they run on.
        "ALTER TABLE jobs ADD COLUMN preset TEXT",
        "UPDATE jobs SET preset = json_extract(settings, '$.preset')",
        "ALTER TABLE workers ADD COLUMN gpu TEXT",
        "ALTER TABLE workers ADD COLUMN vram_gib REAL",
        "ALTER TABLE workers ADD COLUMN ram_gib REAL",
    ),
    (
        # 3: stories refused before queueing (blocked words), so admins can see them in /stats.
        """CREATE TABLE IF NOT EXISTS refusals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            platform TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS refusals_time ON refusals (created_at)",
    ),
    (
        # 4: each chat user's story defaults (/settings), one JSON object per user.
        """CREATE TABLE IF NOT EXISTS user_settings (
            platform TEXT NOT NULL,
            user_id TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            updated_at REAL NOT NULL,
            PRIMARY KEY (platform, user_id)
        )""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def check_is_sqlite(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        raise CorruptDatabase(
            f"{path} exists but is not an SQLite database; it was left untouched. "
            "Move it away or point SVIBOT_DATA_DIR elsewhere.")


async def migrate(db: aiosqlite.Connection, path: Path) -> int:
    """Bring the file up to date; returns the version it had."""
    cur = await db.execute("PRAGMA user_version")
    (version,) = await cur.fetchone()
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this svibot's {SCHEMA_VERSION}; upgrade svibot")
    if version == 0:
        cur = await db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        foreign = {r[0] for r in await cur.fetchall()} - {"jobs", "segments", "events", "workers", "refusals",
                                                                            "user_settings"}
        if foreign:
            raise CorruptDatabase(
                f"{path} is an SQLite database of another program (tables {sorted(foreign)}); left untouched")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            cur = await db.execute("PRAGMA user_version")  # another process may have migrated meanwhile
            if (await cur.fetchone())[0] < target:
                for stmt in MIGRATIONS[target - 1]:
                    await db.execute(stmt)
                await db.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")
    return version
