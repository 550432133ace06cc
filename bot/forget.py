"""`/forget` on both bots: delete the asking user's jobs and files at once, after a confirmation.

The adapters show `ask()`'s text with two buttons (delete / keep); only the asking user's press on
"delete" calls `forget()`. The buttons carry the user id, so a press still works after a restart
and a press by anyone else is refused.
"""
from __future__ import annotations

import logging

from storage.queue import JobQueue

log = logging.getLogger(__name__)

NOTHING_STORED = "I keep nothing of yours here: no photos, videos or jobs."
KEPT = "Nothing was deleted; your jobs and files are kept."
NOT_YOURS = "Only the person who asked may answer this."
CONFIRM_LABEL = "Delete everything"
KEEP_LABEL = "Keep"


def ask_text(num_jobs: int, num_active: int) -> str:
    running = f" {num_active} of them still queued or running will stop." if num_active else ""
    return (f"This deletes your {num_jobs} job{'s' if num_jobs != 1 else ''} here with their photos, "
            f"segment videos and stories, at once and for good.{running} Messages already in this chat "
            "stay; delete those in the app. Delete everything?")


def done_text(num_jobs: int, num_files: int) -> str:
    return (f"Deleted {num_jobs} job{'s' if num_jobs != 1 else ''} and {num_files} "
            f"file{'s' if num_files != 1 else ''}. Nothing of yours is kept here now.")


async def ask(queue: JobQueue, *, platform: str, user_id: str) -> tuple[str, bool]:
    """The question to show and whether there is anything to delete (no buttons when not)."""
    total = await queue.count_since(platform, str(user_id), 0.0)
    if not total:
        return NOTHING_STORED, False
    active = len(await queue.jobs_for_user(platform, str(user_id), active_only=True))
    return ask_text(total, active), True


async def forget(queue: JobQueue, *, platform: str, user_id: str) -> str:
    deleted = await queue.forget_user(platform, str(user_id))
    log.info("forgot %s user %s: %d jobs, %d files", platform, user_id, len(deleted.jobs), len(deleted.files))
    if not deleted.jobs:
        return NOTHING_STORED
    return done_text(len(deleted.jobs), len(deleted.files))
