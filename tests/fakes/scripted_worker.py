"""A scripted stand-in for the GPU worker that goes through the real JobQueue worker verbs.

It writes real (tiny, solid-colour) mp4 files, so what the bots upload can be decoded and counted.
"""
from __future__ import annotations

import asyncio
import base64
import io
import shutil
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from storage import DataDir, JobQueue
from storage.models import Job
from storage.queue import WorkerId

FPS = 16
PREVIEW_KEY = "preview_jpeg"  # as engine.worker writes it


def preview_jpeg(segment: int, step: int, size: tuple[int, int] = (64, 16)) -> bytes:
    """A small JPEG strip whose colour tells (segment, step) apart, like the worker's live previews."""
    buf = io.BytesIO()
    Image.new("RGB", size, ((segment * 90) % 256, (step * 60) % 256, 128)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def preview_colour(jpeg: bytes) -> tuple[int, int, int]:
    """The mean colour of a preview (JPEG rounds, so compare with a tolerance)."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3)  # (H*W, 3)
    return tuple(int(round(v)) for v in pixels.mean(axis=0))


def write_mp4(path: Path, num_frames: int, *, size: tuple[int, int] = (64, 64), shade: int = 0) -> Path:
    """Write `num_frames` frames of a moving gradient; `shade` makes segments look different."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=FPS, macro_block_size=16,
                                         ffmpeg_log_level="error")
    writer.send(None)
    for t in range(num_frames):
        frame = np.full((height, width, 3), (shade * 40 + t * 8) % 256, dtype=np.uint8)  # (H, W, C)
        writer.send(frame.tobytes())
    writer.close()
    return path


def count_frames(path: Path) -> int:
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return frames


class ScriptedWorker:
    """Claim a job, report progress, record each segment, then complete it, step by step."""

    def __init__(self, queue: JobQueue, data_dir: DataDir, *, frames_per_segment: int = 9,
                 num_steps: int = 2, step_delay_s: float = 0.0, previews: bool = False,
                 reuse_renders: bool = False) -> None:
        self.queue = queue
        self.data_dir = data_dir
        self.frames_per_segment = frames_per_segment
        self.num_steps = num_steps
        self.step_delay_s = step_delay_s
        self.previews = previews  # each progress event carries a preview, as with SVIBOT_PREVIEW=on
        self.id = WorkerId.current()
        # reuse_renders: encode each distinct clip once and copy it after, for runs of many stories
        self._renders: dict[tuple[int, int], Path] | None = {} if reuse_renders else None

    def _write(self, path: Path, num_frames: int, shade: int) -> Path:
        if self._renders is None:
            return write_mp4(path, num_frames, shade=shade)
        key = (num_frames, shade)
        if key not in self._renders:
            self._renders[key] = write_mp4(self.data_dir.root / "renders" / f"{num_frames}_{shade}.mp4",
                                           num_frames, shade=shade)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._renders[key], path)
        return path

    async def online(self) -> None:
        await self.queue.worker_seen(self.id, preset="scripted")

    async def claim(self) -> Job:
        job = await self.queue.claim(self.id)
        assert job is not None, "nothing to claim"
        return job

    async def progress(self, job: Job, segment: int) -> None:
        for step in range(1, self.num_steps + 1):
            payload = {"segment": segment, "num_segments": job.num_segments, "step": step,
                       "num_steps": self.num_steps, "eta_s": 5.0 * (job.num_segments - segment)}
            if self.previews:
                payload[PREVIEW_KEY] = base64.b64encode(preview_jpeg(segment, step)).decode("ascii")
            await self.queue.record_progress(job.id, self.id, payload)
            if self.step_delay_s:
                await asyncio.sleep(self.step_delay_s)

    async def segment(self, job: Job, index: int) -> Path:
        path = await asyncio.to_thread(self._write, self.data_dir.segment_video(job.id, index),
                                       self.frames_per_segment, index)
        await self.queue.record_segment(
            job.id, self.id, index=index, prompt=job.prompts[index], video_path=path, carry_path=None,
            num_frames=self.frames_per_segment, duration_s=self.frames_per_segment / FPS, gen_seconds=0.1)
        return path

    async def complete(self, job: Job) -> Path:
        total = self.frames_per_segment * job.num_segments
        path = await asyncio.to_thread(self._write, self.data_dir.story_video(job.id), total, 7)
        await self.queue.complete(job.id, self.id, path, {
            "num_segments": job.num_segments, "duration_s": total / FPS, "num_frames": total})
        return path

    async def run_segments(self, job: Job, indices: range) -> None:
        for index in indices:
            await self.progress(job, index)
            await self.segment(job, index)

    async def run_job(self) -> Job:
        job = await self.claim()
        await self.run_segments(job, range(job.num_segments))
        await self.complete(job)
        return job
