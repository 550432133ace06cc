"""The platform-neutral delivery loop: turn the queue's pending events into chat messages.

An event is marked delivered only after the platform accepted what it caused, so a crash or a
restart resends at most the message in flight, and an event already marked is never sent again.
On stop, the delivery in flight gets `shutdown_grace_s`; one still hanging then is cancelled and
stays pending, so it is sent at the next start.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from storage.errors import JobNotFound
from storage.models import ACTIVE_STATES, Event, Job
from storage.queue import JobQueue

from . import media, texts
from .i18n import job_language, render

log = logging.getLogger(__name__)

STATUS_KINDS = ("position", "progress")
FINAL_KINDS = ("done", "failed", "cancelled")
# Jobs whose adapter posts the status message itself (the "Queued" reply) carry this meta key;
# the outbox then waits a little for that message id instead of posting a second status message.
STATUS_REPLY_META = "status_reply"
# Progress payload key of the step's live preview, a base64 JPEG strip (written by the worker when
# SVIBOT_PREVIEW=on). Only the newest one of a job is shown: older ones are superseded unsent.
PREVIEW_KEY = "preview_jpeg"
MAX_PREVIEW_BYTES = 512 * 1024  # a strip is a few KB; anything far larger is not a preview


class RetryLater(Exception):
    """The platform asked us to slow down (HTTP 429: `seconds` says how long) or is briefly
    unreachable (5xx, a timeout, a dropped connection: `seconds` is None and the outbox backs off,
    doubling the wait on each failure in a row)."""

    def __init__(self, seconds: float | None = None) -> None:
        super().__init__("retry with backoff" if seconds is None else f"retry in {seconds:.1f} s")
        self.seconds = None if seconds is None else float(seconds)


class Undeliverable(Exception):
    """The event can never be delivered (chat gone, bot blocked); it is dropped with a log line."""


class Deliverer(Protocol):
    """What a platform adapter provides to the outbox. Methods return the platform message id."""

    platform: str

    def upload_limit(self, job: Job) -> int:
        """Largest file in bytes this job's chat accepts."""

    async def show_status(self, job: Job, text: str, *, active: bool, preview: bytes | None = None) -> str:
        """Edit the job's status message (post one if it has none). `active` keeps the Cancel button.

        `preview` (JPEG bytes) replaces the job's live preview image shown with the status: the
        status message's attachment, or one preview message edited in place. An unchanged text
        ("message is not modified") counts as success.
        """

    async def send_video(self, job: Job, path: Path, caption: str) -> str:
        """Upload one video to the job's chat."""

    async def send_text(self, job: Job, text: str) -> str:
        """Post a new text message in the job's chat."""


@dataclass(frozen=True)
class OutboxConfig:
    edit_interval_s: float = 3.0  # status edits per chat are at most this often
    poll_interval_s: float = 1.0
    batch_size: int = 100
    status_grace_s: float = 30.0  # how long to wait for the adapter to record a job's status message
    max_retry_wait_s: float = 60.0  # a flood wait or backoff longer than this is cut, then retried
    retry_base_s: float = 2.0  # first backoff after a 5xx, timeout or dropped connection
    shutdown_grace_s: float = 10.0  # on stop, how long an upload in flight may still take


class Outbox:
    """Deliver one platform's events in order, coalescing status updates and throttling edits."""

    def __init__(self, queue: JobQueue, deliverer: Deliverer, config: OutboxConfig = OutboxConfig(), *,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.deliverer = deliverer
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._last_edit: dict[str, float] = {}  # chat id -> clock() of the last status edit
        self._shown: dict[int, str] = {}  # job id -> status text last shown
        self._sent: dict[tuple[int, str], str] = {}  # (event id, part) -> message id, for partial events
        self.retries = 0  # rounds cut short by RetryLater, for logs and the soak's numbers
        self._failures_in_a_row = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set. Flood waits and errors never lose an event.

        Between rounds it sleeps until the queue signals news (a worker on another machine wrote an
        event) or the poll interval passes; a flood wait is always sat out in full.
        """
        news = self.queue.watch("events")
        while not stop.is_set():
            wait = self.config.poll_interval_s
            try:
                await self._round(stop)
            except RetryLater as err:
                self.retries += 1
                if err.seconds is None:
                    wait = self.config.retry_base_s * 2 ** min(self._failures_in_a_row, 16)
                    self._failures_in_a_row += 1
                else:
                    wait = max(err.seconds, wait)
                wait = min(wait, self.config.max_retry_wait_s)
                log.warning("%s asked to slow down or is unreachable (%s); waiting %.1f s",
                            self.deliverer.platform, err.__cause__ or err, wait)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
                continue
            except Exception:
                log.exception("outbox round failed; retrying in %.1f s", wait)
            await news.wait(wait, stop)

    async def _round(self, stop: asyncio.Event) -> None:
        """One `deliver_once`; once `stop` is set it has `shutdown_grace_s` left, then it is cancelled."""
        task = asyncio.create_task(self.deliver_once())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=self.config.shutdown_grace_s)
            if not task.done():
                log.warning("stopping: a %s delivery was still in flight after %.0f s; it stays pending and "
                            "is sent at the next start", self.deliverer.platform, self.config.shutdown_grace_s)
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
                return
            task.result()
        finally:
            stopped.cancel()
            if not task.done():  # run() itself was cancelled
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopped

    async def deliver_once(self) -> int:
        """One pass over the pending events; returns how many were marked delivered.

        RetryLater propagates (the caller waits); the event that hit it stays pending.
        """
        events = await self.queue.pending_events(self.deliverer.platform, self.config.batch_size)
        last_index = {e.job_id: i for i, e in enumerate(events)}
        failed_jobs: set[int] = set()
        marked = 0
        for i, event in enumerate(events):
            if event.job_id in failed_jobs:
                continue  # keep a job's messages in order: nothing after a failed one this round
            if event.kind in STATUS_KINDS and last_index[event.job_id] > i:
                marked += await self._mark(event, None)  # a newer event of this job supersedes it
                continue
            try:
                job = await self.queue.get_job(event.job_id)
            except JobNotFound:
                marked += await self._mark(event, None)
                continue
            try:
                done, message_id = await self._deliver(event, job)
            except RetryLater:
                raise
            except Undeliverable as err:
                log.warning("dropping event %d (%s) of job #%d: %s", event.id, event.kind, job.id, err)
                done, message_id = True, None
            except Exception:
                log.exception("delivering event %d (%s) of job #%d failed; will retry", event.id,
                              event.kind, job.id)
                failed_jobs.add(job.id)
                continue
            self._failures_in_a_row = 0  # the platform answered: the next failure backs off from the start
            if done:
                marked += await self._mark(event, message_id)
        return marked

    async def _mark(self, event: Event, message_id: str | None) -> int:
        for key in [k for k in self._sent if k[0] == event.id]:
            del self._sent[key]
        return int(await self.queue.mark_delivered(event.id, message_id))

    # -- one event -------------------------------------------------------------------------------
    async def _deliver(self, event: Event, job: Job) -> tuple[bool, str | None]:
        """Returns (done, message id); done=False leaves the event pending for a later round.

        Texts are rendered in the language the job was requested in (`job_language`), as long after
        the request as the worker takes.
        """
        p = event.payload
        lang = job_language(job)
        if event.kind == "position":
            eta = (await self.queue.stats()).eta_seconds(await self.queue.segments_ahead(job.id))
            text = render(texts.position_text(job.id, int(p["position"]), eta), lang)
            return await self._status(job, text, wait=False)
        if event.kind == "progress" and "paused" in p:  # the story goes on later, nothing was lost
            text = render(texts.paused_text(job.id, int(p.get("segments_done", 0)), str(p["paused"])), lang)
            return await self._status(job, text, wait=True, active=True)
        if event.kind == "progress":
            text = render(texts.progress_text(job.id, int(p["segment"]), int(p["num_segments"]), int(p["step"]),
                                              int(p["num_steps"]), p.get("eta_s")), lang)
            return await self._status(job, text, wait=False, preview=_preview(event))
        if event.kind == "segment":
            index, n = int(p["index"]), int(p["num_segments"])
            await self._status(job, render(texts.uploading_text(job.id, index, n), lang), wait=False, active=True)
            caption = render(texts.segment_caption(index, n, str(p["prompt"])), lang)
            return True, await self._once(event, "video", lambda: self._video(job, str(p["video_path"]), caption))
        if event.kind == "done":
            n = int(p.get("num_segments", job.num_segments))
            duration = float(p.get("duration_s", 0.0))
            final = str(p.get("final_path") or job.final_path or "")
            caption = render(texts.story_caption(n, duration), lang)
            message_id = await self._once(event, "video", lambda: self._video(job, final, caption))
            await self._status(job, render(texts.done_text(job.id, n, duration), lang), wait=True, active=False)
            return True, message_id
        if event.kind == "failed":
            text = render(texts.failed_text(job.id, str(p.get("error", "unknown error"))), lang)
            message_id = await self._once(event, "text", lambda: self.deliverer.send_text(job, text))
            await self._status(job, text, wait=True, active=False)
            return True, message_id
        if event.kind == "cancelled":
            text = render(texts.cancelled_text(job.id, int(p.get("segments_done", 0))), lang)
            return await self._status(job, text, wait=True, active=False)
        raise Undeliverable(f"unknown event kind {event.kind!r}")

    async def _once(self, event: Event, part: str, send: Callable) -> str:
        """Send one part of an event at most once per process, even if a later part must be retried."""
        key = (event.id, part)
        if key not in self._sent:
            self._sent[key] = str(await send())
        return self._sent[key]

    async def _video(self, job: Job, ref: str, caption: str) -> str:
        try:  # on PostgreSQL the file is fetched from the database into the local cache
            path = await self.queue.local_file(ref, job_id=job.id)
        except (OSError, ValueError) as err:
            raise Undeliverable(f"video {ref!r} is missing: {err}") from None
        if not path.is_file():
            raise Undeliverable(f"video file {path} is missing")
        limit = self.deliverer.upload_limit(job)
        fitted = await media.fit_video(path, limit)
        if fitted is None:
            refusal = render(texts.video_too_big_text(path.stat().st_size, limit), job_language(job))
            return await self.deliverer.send_text(job, caption + "\n" + refusal)
        return await self.deliverer.send_video(job, fitted, caption)

    async def _status(self, job: Job, text: str, *, wait: bool, active: bool | None = None,
                      preview: bytes | None = None) -> tuple[bool, str | None]:
        """Show `text` as the job's status, within the per-chat edit rate.

        wait=False: if the chat was edited too recently, leave the event pending (a newer one
        will likely replace it). wait=True (final states): sleep until the edit is allowed.
        A `preview` rides along with the edit, so previews are throttled with the status.
        """
        if self._shown.get(job.id) == text:
            return True, job.status_message_id
        if job.status_message_id is None and job.meta.get(STATUS_REPLY_META) \
                and self._wall_clock() - job.created_at < self.config.status_grace_s:
            if not wait:
                return False, None
            raise RetryLater(1.0)  # the adapter is still posting the status message
        chat = str(job.chat_id)
        due = self._last_edit.get(chat, float("-inf")) + self.config.edit_interval_s - self._clock()
        if due > 0:
            if not wait:
                return False, None
            await asyncio.sleep(due)
        if active is None:
            active = job.state in ACTIVE_STATES
        extra = {} if preview is None else {"preview": preview}
        message_id = await self.deliverer.show_status(job, text, active=active, **extra)
        self._last_edit[chat] = self._clock()
        self._shown[job.id] = text
        if message_id is not None and str(message_id) != (job.status_message_id or ""):
            await self.queue.set_status_message(job.id, str(message_id))
        return True, message_id


def _preview(event: Event) -> bytes | None:
    """The progress event's preview JPEG, or None (previews off, or a malformed payload: logged)."""
    raw = event.payload.get(PREVIEW_KEY)
    if not raw:
        return None
    try:
        data = base64.b64decode(str(raw), validate=True)
    except (binascii.Error, ValueError):
        log.warning("event %d of job #%d has a malformed preview; showing the text only", event.id, event.job_id)
        return None
    if len(data) > MAX_PREVIEW_BYTES or not data.startswith(b"\xff\xd8"):  # JPEG's SOI marker
        log.warning("event %d of job #%d has a preview that is not a small JPEG (%d bytes); showing the text only",
                    event.id, event.job_id, len(data))
        return None
    return data
