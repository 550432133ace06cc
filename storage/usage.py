"""Usage records and reports: refused stories (moderation) and the admins' usage statistics.

Written once over `Database`, so SQLite and PostgreSQL give the same numbers.
"""
from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from datetime import datetime, timezone

from .db import Database
from .models import DayUsage, SegmentTiming, UsageReport

DAY_S = 86400.0
DEFAULT_RECIPE = "fast"  # what the worker runs for a job that names no `quality` (engine.config.DEFAULT_RECIPE)


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

    async def usage_report(self, *, days: int = 7, now: float | None = None) -> UsageReport:
        """Usage over the last `days` UTC days (today included): stories and segments per day,
        median seconds per segment per preset and recipe, failures by reason, active users,
        refusals, and the queue now. Rows of the window are read and grouped here, so both
        backends give the same numbers without dialect-specific date SQL."""
        if days < 1:
            raise ValueError(f"days is {days}; it must be at least 1")
        now = self._clock() if now is None else now
        today = int(now // DAY_S)
        since = (today - days + 1) * DAY_S
        per_day = {d: [0, 0] for d in range(today - days + 1, today + 1)}
        users: set[tuple[str, str]] = set()
        for created, platform, user_id in await self._db.fetchall(
                "SELECT created_at, platform, user_id FROM jobs WHERE created_at >= ?", since):
            per_day[min(int(created // DAY_S), today)][0] += 1
            users.add((platform, user_id))
        timings: dict[tuple[str, str], list[float]] = {}
        for created, seconds, preset, settings in await self._db.fetchall(
                """SELECT s.created_at, s.gen_seconds, j.preset, j.settings
                   FROM segments s JOIN jobs j ON j.id = s.job_id WHERE s.created_at >= ?""", since):
            per_day[min(int(created // DAY_S), today)][1] += 1
            recipe = json.loads(settings).get("quality") or DEFAULT_RECIPE
            timings.setdefault((preset or "default", str(recipe)), []).append(float(seconds))
        failures: dict[str, int] = {}
        for (error,) in await self._db.fetchall(
                "SELECT error FROM jobs WHERE state = 'failed' AND finished_at >= ?", since):
            reason = failure_reason(error)
            failures[reason] = failures.get(reason, 0) + 1
        refusals: dict[str, int] = {}
        for reason, count in await self._db.fetchall(
                "SELECT reason, COUNT(*) FROM refusals WHERE created_at >= ? GROUP BY reason", since):
            refusals[reason] = int(count)
        queued, running = await self._db.fetchone(
            "SELECT COALESCE(SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0) FROM jobs")
        return UsageReport(
            days=tuple(DayUsage(_date(d), stories, segments) for d, (stories, segments) in sorted(per_day.items())),
            seconds_per_segment=tuple(
                SegmentTiming(preset, recipe, len(v), round(statistics.median(v), 2))
                for (preset, recipe), v in sorted(timings.items())),
            failures=tuple(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
            refusals=tuple(sorted(refusals.items())),
            active_users=len(users), queued=int(queued), running=int(running))


def failure_reason(error: str | None) -> str:
    """A failed job's error without its particulars, so equal causes count together:
    "ran out of GPU memory at segment 2 of 3; try ..." -> "ran out of GPU memory"."""
    text = re.sub(r"\s+at segment \d+ of \d+", "", error or "unknown")
    text = re.split(r"[;\n]", text, maxsplit=1)[0]
    if text.startswith("the engine failed: "):  # keep the exception's type, drop its message
        text = ":".join(text.split(":")[:2])
    return text.strip()[:80] or "unknown"


def _date(day: int) -> str:
    return datetime.fromtimestamp(day * DAY_S, timezone.utc).strftime("%Y-%m-%d")
