"""`/forget` on both bots: delete the asking user's jobs and files at once, after a confirmation.

The adapters show `ask()`'s text with two buttons (delete / keep); only the asking user's press on
"delete" calls `forget()`. The buttons carry the user id, so a press still works after a restart
and a press by anyone else is refused.
"""
from __future__ import annotations

import logging

from storage.queue import JobQueue

from .i18n import Lines, Text, _, _n

log = logging.getLogger(__name__)

NOTHING_STORED = _("I keep nothing of yours here: no photos, videos or jobs.")
KEPT = _("Nothing was deleted; your jobs and files are kept.")
NOT_YOURS = _("Only the person who asked may answer this.")
CONFIRM_LABEL = _("Delete everything")
KEEP_LABEL = _("Keep")


def ask_text(num_jobs: int, num_active: int) -> Lines:
    question = _n("This deletes your {n} job here with its photo, segment videos and story, at once and for good.",
                  "This deletes your {n} jobs here with their photos, segment videos and stories, at once and for "
                  "good.", num_jobs)
    running = _n("{n} of them still queued or running will stop.", "{n} of them still queued or running will stop.",
                 num_active) if num_active else ""
    rest = _("Messages already in this chat stay; delete those in the app. Delete everything?")
    return Lines([p for p in (question, running, rest) if p], sep=" ")


def done_text(num_jobs: int, num_files: int) -> Text:
    return _("Deleted {jobs} and {files}. Nothing of yours is kept here now.",
             jobs=_n("{n} job", "{n} jobs", num_jobs), files=_n("{n} file", "{n} files", num_files))


async def ask(queue: JobQueue, *, platform: str, user_id: str) -> tuple[Text | Lines, bool]:
    """The question to show and whether there is anything to delete (no buttons when not)."""
    total = await queue.count_since(platform, str(user_id), 0.0)
    if not total:
        return NOTHING_STORED, False
    active = len(await queue.jobs_for_user(platform, str(user_id), active_only=True))
    return ask_text(total, active), True


async def forget(queue: JobQueue, *, platform: str, user_id: str) -> Text:
    deleted = await queue.forget_user(platform, str(user_id))
    log.info("forgot %s user %s: %d jobs, %d files", platform, user_id, len(deleted.jobs), len(deleted.files))
    if not deleted.jobs:
        return NOTHING_STORED
    return done_text(len(deleted.jobs), len(deleted.files))
