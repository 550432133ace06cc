"""Usage records and reports: refused stories (moderation) and the admins' usage statistics.

Written once over `Database`, so SQLite and PostgreSQL give the same numbers.
"""
from __future__ import annotations

from collections.abc import Callable

from .db import Database


class UsageVerbs:
    """Mixed into `JobQueue`; needs `_db` and `_clock`."""

    _db: Database
    _clock: Callable[[], float]

    async def record_refusal(self, platform: str, chat_id: str, user_id: str, reason: str, detail: str = "") -> None:
        """Remember that a story was refused before queueing (nothing else is written)."""
        async with self._db.tx() as s:
            await s.execute(
                "INSERT INTO refusals (platform, chat_id, user_id, reason, detail, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                platform, str(chat_id), str(user_id), reason, detail, self._clock())

    async def refusal_count(self, since: float = 0.0) -> int:
        (count,) = await self._db.fetchone("SELECT COUNT(*) FROM refusals WHERE created_at >= ?", since)
        return int(count)
