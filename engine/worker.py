"""The worker: claims jobs from the queue one at a time, runs their stories on the engine and
records every finished segment, so the adapters can deliver it and a crashed job can resume.

The engine runs in a thread; its callbacks hop back onto the event loop for every queue write.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from storage import DataDir, DiskFull, InputError, Job, JobQueue, LeaseLost, WorkerId, WorkerInfo
from storage.errors import BadSetting
from storage.files import atomic_write_bytes, remove_partials, remove_unrecorded

from .config import DEFAULT_RECIPE, RECIPES, GenerationSettings, Recipe
from .models.config import EngineConfig
from .errors import Cancelled
from .models.loading import free_memory, load_models, unload_models
from .models.presets import get_preset
from .resume import carry_bytes, load_carry, video_ok
from .svi import Progress, SegmentResult, generate_story
from .video import probe_num_frames, stitch, write_mp4

log = logging.getLogger(__name__)

PREVIEW_KEY = "preview_jpeg"  # progress payload key: the step's preview strip, base64 JPEG
JOB_ONLY_KEYS = ("preset", "quality")  # job settings that are not GenerationSettings fields


@dataclass(frozen=True)
class WorkerConfig:
    data_dir: DataDir
    engine: EngineConfig  # the default preset; a job's "preset" setting overrides it
    poll_s: float = 1.0  # how often an idle worker looks for work when no wake-up comes
    heartbeat_s: float = 20.0  # lease extension while no denoising step runs (loading, decoding)
    progress_interval_s: float = 2.0  # progress events are throttled to one per interval per job
    recipes: Mapping[str, Recipe] = field(default_factory=lambda: dict(RECIPES))  # with the operator's overrides
    presets: tuple[str, ...] | None = None  # claim only jobs naming these presets (or none); None: any
    previews: bool = False  # SVIBOT_PREVIEW: each progress event carries a preview strip of the step
    retention_days: float = 7.0  # finished jobs' rows and files are deleted this long after they end
    retention_every_s: float = 3600.0  # how often an idle worker looks for them
    disk_retry_s: float = 60.0  # a long-running worker paused by a full disk looks again this often


class _Stop(Exception):
    """Raised through the engine when the worker is shutting down (not a user cancel)."""


def resolve_settings(settings: dict[str, Any], engine: EngineConfig,
                     recipes: Mapping[str, Recipe] = RECIPES) -> tuple[str, GenerationSettings]:
    """The preset and generation settings a job's settings ask for: the preset's defaults, then the whole
    recipe its `quality` names (`fast` when it names none), then the job's own values.

    Bad values raise `BadSetting`; callers check before queueing, the worker again before loading.
    """
    preset = get_preset(settings.get("preset") or engine.preset)
    level = settings.get("quality") or DEFAULT_RECIPE
    if level not in recipes:
        raise BadSetting(f"quality must be one of {sorted(recipes)} but is {level!r}")
    base = preset.settings.with_recipe(recipes[level])
    extra = {k: v for k, v in settings.items() if k not in JOB_ONLY_KEYS}
    return preset.name, GenerationSettings.from_dict({**base.to_dict(), **extra})


def describe(engine: EngineConfig) -> WorkerInfo:
    """What this worker tells the queue about itself (shown by `svibot workers` and /queue)."""
    gpu, vram = "cpu", None
    if engine.device != "cpu" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        vram = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return WorkerInfo(preset=engine.preset, gpu=gpu,
                      vram_gib=engine.vram_budget_gib if engine.vram_budget_gib is not None else vram,
                      ram_gib=engine.ram_budget_gib)


def paused_reason(err: DiskFull) -> str:
    return ("the server's disk is full; the story continues from where it stopped once the operator "
            "frees space")


def user_error(err: BaseException, segment: int, num_segments: int) -> str:
    """A reason the person who asked for the story can read."""
    where = f"segment {segment + 1} of {num_segments}"
    if isinstance(err, torch.OutOfMemoryError):
        return f"ran out of GPU memory at {where}; try a smaller preset or fewer frames"
    if isinstance(err, DiskFull):
        return f"disk full at {where}; the operator needs to free space"
    if isinstance(err, InputError):
        return str(err)
    return f"the engine failed at {where}: {type(err).__name__}: {err}"


class Worker:
    """Runs queued jobs serially. `generate` is the engine entry point (replaceable in tests)."""

    def __init__(self, queue: JobQueue, config: WorkerConfig, *,
                 identity: WorkerId | None = None,
                 generate: Callable[..., list[SegmentResult]] = generate_story) -> None:
        self.queue = queue
        self.config = config
        self.me = identity or WorkerId.current()
        self._generate = generate
        self._preset_loaded: str | None = None
        self._last_purge = float("-inf")

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, once: bool = False,
                  until_job: int | None = None) -> int:
        """Serve jobs until `stop` is set. Returns jobs run.

        With `once`, drain: stop when nothing this worker can claim is queued and no other worker
        holds a job either (a job whose worker dies comes back to the queue when its lease expires).
        With `until_job`, run only that job (other queued jobs stay for another worker) and return
        once it has ended, whoever ran it.
        """
        done = 0
        work = self.queue.watch("jobs")  # before the first claim: no wake-up is missed
        await self.queue.register_worker(self.me, describe(self.config.engine))
        reclaimed = await self.queue.reclaim_dead_local(self.me)
        if reclaimed:
            log.info("reclaimed jobs %s from a dead worker on this host", reclaimed)
        try:
            while not stop.is_set():
                try:
                    await self.queue.reap_expired()
                    await self.queue.worker_seen(self.me, self._preset_loaded or self.config.engine.preset)
                    if until_job is not None and (await self.queue.get_job(until_job)).state not in ("queued", "running"):
                        break  # ended, whoever ran it
                    job = await self.queue.claim(self.me, presets=self.config.presets, job_id=until_job)
                    if job is None:
                        if once and (await self.queue.stats()).running == 0:
                            break
                        await self.idle()
                        await work.wait(self.config.poll_s, stop)
                        continue
                    await self.process(job, stop)
                except DiskFull as err:
                    if once or until_job is not None:
                        raise  # the command ends with one line naming the data dir
                    log.error("%s; pausing for %.0f s", err, self.config.disk_retry_s)
                    await work.wait(self.config.disk_retry_s, stop)
                    continue
                done += 1
        finally:
            try:
                await self.queue.worker_gone(self.me)
            except DiskFull as err:  # the row ages out; a full disk must not hide why we stopped
                log.warning("could not unregister this worker: %s", err)
        return done

    async def idle(self) -> None:
        """Housekeeping while no job is waiting: delete finished jobs past the retention time."""
        now = time.monotonic()
        if now - self._last_purge < self.config.retention_every_s:
            return
        self._last_purge = now
        gone = await self.queue.purge_finished(self.config.retention_days * 86400)
        if gone.jobs:
            log.info("retention: deleted %d finished job(s) older than %g days and %d file(s)",
                     len(gone.jobs), self.config.retention_days, len(gone.files))

    # -- one job ---------------------------------------------------------------------------
    async def process(self, job: Job, stop: asyncio.Event) -> Job:
        loop = asyncio.get_running_loop()
        n = job.num_segments
        state = {"segment": 0, "start": 0, "last_progress": 0.0, "t0": time.monotonic(), "cancel": False}
        log.info("job #%s: %d segment(s), attempt %d", job.id, n, job.attempts + 1)

        def call(coro: Any) -> Any:  # from the engine thread onto the loop, and wait
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        def should_cancel() -> bool:
            if stop.is_set():
                raise _Stop()
            state["cancel"] = call(self.queue.heartbeat(job.id, self.me))
            return state["cancel"]

        def on_progress(p: Progress) -> None:
            state["segment"] = p.segment
            now = time.monotonic()
            if p.step != 1 and now - state["last_progress"] < self.config.progress_interval_s:
                return
            state["last_progress"] = now
            payload = {"segment": p.segment, "num_segments": p.num_segments, "step": p.step,
                       "num_steps": p.num_steps, "eta_s": self._eta(p, state)}
            if p.preview is not None:  # rendered here, in the engine thread, only for reported steps
                payload[PREVIEW_KEY] = base64.b64encode(p.preview()).decode("ascii")
            call(self.queue.record_progress(job.id, self.me, payload))

        def on_segment(seg: SegmentResult) -> None:
            # 1. files first (atomic), 2. the row, 3. the "segment ready" event (same transaction as 2)
            video, carry_path = self._write_segment(job, seg, settings)
            call(self.queue.record_segment(
                job.id, self.me, index=seg.index, prompt=seg.prompt, video_path=video, carry_path=carry_path,
                num_frames=int(seg.frames.shape[0]), duration_s=seg.frames.shape[0] / settings.fps,
                gen_seconds=seg.seconds))
            state["segment"] = seg.index + 1

        heartbeat = asyncio.create_task(self._heartbeat_loop(job, state))
        try:
            preset_name, settings = resolve_settings(job.settings, self.config.engine, self.config.recipes)
            # A worker killed mid-write (kill -9, power loss) left temp files beside the job's files;
            # only the lease holder writes here, so they are safe to remove before resuming.
            swept = await asyncio.to_thread(remove_partials, self.config.data_dir.job_dir(job.id))
            if swept:
                log.info("job #%s: removed %d half-written file(s) a stopped worker left: %s",
                         job.id, len(swept), ", ".join(p.name for p in swept))
            start, carry = await self._resume_point(job)
            state["segment"] = state["start"] = start
            if start < n:
                photo = await self.queue.local_file(job.photo_path)
                models = await asyncio.to_thread(self._models_for, preset_name)
                extra = {"previews": True} if self.config.previews else {}
                await asyncio.to_thread(
                    self._generate, models, photo, job.prompts, settings,
                    start_segment=start, carry=carry, on_progress=on_progress, on_segment=on_segment,
                    should_cancel=should_cancel, **extra)
            await self._repair_videos(job, preset_name, settings)
            return await self._finish(job)
        except DiskFull as err:
            log.error("job #%s paused: %s", job.id, err)
            await asyncio.to_thread(free_memory)
            await self._pause(job, err)
            raise
        except Cancelled:
            kept = len(await self.queue.segments(job.id))
            log.info("job #%s cancelled after %d segment(s)", job.id, kept)
            return await self.queue.mark_cancelled(job.id, self.me, segments_done=kept)
        except _Stop:
            log.info("job #%s released for the next start (shutting down)", job.id)
            await self.queue.release(job.id, self.me)
            return await self.queue.get_job(job.id)
        except LeaseLost:
            log.warning("job #%s: lease lost; another worker owns it now", job.id)
            return await self.queue.get_job(job.id)
        except Exception as err:  # one bad job never stops the queue
            log.error("job #%s failed", job.id, exc_info=True)
            await asyncio.to_thread(free_memory)
            try:
                return await self.queue.fail(job.id, self.me, user_error(err, state["segment"], n))
            except LeaseLost:
                return await self.queue.get_job(job.id)
        finally:
            heartbeat.cancel()

    async def _pause(self, job: Job, err: DiskFull) -> None:
        """Give the job back without counting an attempt, telling its chat why. On a really full disk
        the pause's few KB may not fit either: the files this attempt wrote but never recorded (made
        again on resume anyway) are removed to make room, and the pause is tried once more."""
        for last_try in (False, True):
            try:
                await self.queue.pause(job.id, self.me, paused_reason(err))
                return
            except LeaseLost:
                return
            except DiskFull:
                if last_try:  # the lease runs out and the job comes back, counting an attempt
                    log.error("job #%s: the queue database is full too; the job returns when its lease ends", job.id)
                    return
            refs = [job.photo_path, *(r for s in await self.queue.segments(job.id) for r in (s.video_path, s.carry_path))]
            kept = {Path(ref).name for ref in refs if ref}
            freed = await asyncio.to_thread(remove_unrecorded, self.config.data_dir.job_dir(job.id), kept)
            log.info("job #%s: removed %d unrecorded file(s) to make room for the pause", job.id, len(freed))

    def _write_segment(self, job: Job, seg: SegmentResult, settings: GenerationSettings):
        """Files first, each atomic (a full disk leaves no half file); the caller records them after."""
        video = write_mp4(seg.frames, self.config.data_dir.segment_video(job.id, seg.index), fps=settings.fps)
        carry_path = atomic_write_bytes(self.config.data_dir.segment_carry(job.id, seg.index), carry_bytes(seg.carry))
        return video, carry_path

    async def _resume_point(self, job: Job) -> tuple[int, torch.Tensor | None]:
        """The first segment to generate and the carry it starts from. A damaged carry of the last
        recorded segment drops that segment, so it is made again from the one before."""
        done = await self.queue.segments(job.id)
        while done:
            # Files come from the queue: on PostgreSQL another machine may have written them.
            carry = await asyncio.to_thread(load_carry, await self.queue.local_file(done[-1].carry_path))
            if carry is not None:
                return len(done), carry
            await self.queue.drop_segments(job.id, self.me, done[-1].index)
            done = done[:-1]
        return 0, None

    async def _repair_videos(self, job: Job, preset_name: str, settings: GenerationSettings) -> None:
        """Before stitching, make again every segment video that does not decode to its frame count,
        from the carry of the segment before it (the same frames: generation is deterministic)."""
        segments = await self.queue.segments(job.id)
        for seg in segments:
            path = await self.queue.local_file(seg.video_path)
            if await asyncio.to_thread(video_ok, path, seg.num_frames):
                continue
            carry = None
            if seg.index:
                carry = await asyncio.to_thread(load_carry, await self.queue.local_file(segments[seg.index - 1].carry_path))
                if carry is None:
                    raise RuntimeError(f"segment {seg.index + 1}'s video and the carry before it are both damaged")
            photo = await self.queue.local_file(job.photo_path)
            models = await asyncio.to_thread(self._models_for, preset_name)
            await asyncio.to_thread(
                self._generate, models, photo, job.prompts[:seg.index + 1], settings, start_segment=seg.index,
                carry=carry, on_segment=lambda again: self._write_segment(job, again, settings))
            log.info("job #%s: segment %d's video was damaged and is made again", job.id, seg.index + 1)

    async def _finish(self, job: Job) -> Job:
        segments = await self.queue.segments(job.id)
        videos = [await self.queue.local_file(s.video_path) for s in segments]
        final = await asyncio.to_thread(stitch, videos, self.config.data_dir.story_video(job.id))
        frames = await asyncio.to_thread(probe_num_frames, final)
        return await self.queue.complete(job.id, self.me, final, {
            "num_segments": len(segments), "num_frames": frames,
            "duration_s": round(sum(s.duration_s for s in segments), 2)})

    def _models_for(self, preset_name: str):
        """Load (or reuse) the models of a preset; switching presets frees the previous one."""
        if self._preset_loaded not in (None, preset_name):
            unload_models()
            free_memory()
        models = load_models(replace(self.config.engine, preset=preset_name))
        self._preset_loaded = preset_name
        return models

    def _eta(self, p: Progress, state: dict) -> float | None:
        done_here = p.segment - state["start"] + (p.step - 1) / p.num_steps  # work done in this attempt
        if done_here <= 0:
            return None
        per_segment = (time.monotonic() - state["t0"]) / done_here
        return round(per_segment * (p.num_segments - p.segment - (p.step - 1) / p.num_steps), 1)

    async def _heartbeat_loop(self, job: Job, state: dict) -> None:
        """Keep the lease (and the liveness row) fresh while no denoising step heartbeats for us."""
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                state["cancel"] = await self.queue.heartbeat(job.id, self.me)
                await self.queue.worker_seen(self.me, self._preset_loaded)
            except LeaseLost:
                return
