"""`svibot story`: queue one story as a `cli` job, run the worker in this process until it ends,
and show its progress from the queue's outbox like any other front end would."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import shutil
import sys
from dataclasses import replace

from tqdm import tqdm

from storage import JobQueue, NewJob, parse_prompts
from storage.errors import NotAnImage

from .config import AppConfig
from engine.models.presets import get_preset
from engine.worker import Worker, resolve_settings

SETTING_FLAGS = ("num_inference_steps", "guidance_high", "guidance_low", "chaining", "quality", "loop", "loop_strength",
                 "color_match")
TERMINAL = ("done", "failed", "cancelled")


def story_settings(cfg: AppConfig, args: argparse.Namespace) -> dict:
    settings = {"seed": args.seed, "preset": cfg.engine.preset}
    if getattr(args, "guidance", None) is not None:  # both experts; --guidance-high/--guidance-low win
        settings.update(guidance_high=args.guidance, guidance_low=args.guidance)
    settings.update({k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None})
    return settings


async def run_story(cfg: AppConfig, args: argparse.Namespace, stop: asyncio.Event, interrupted: list) -> int:
    # 1. Check everything before touching the queue or the models.
    try:
        photo = args.photo.read_bytes()
    except OSError as err:
        raise NotAnImage(f"cannot read the photo {str(args.photo)!r}: {err.strerror}") from None
    prompts = parse_prompts(args.story, cfg.limits)
    settings = story_settings(cfg, args)
    resolve_settings(settings, cfg.engine, cfg.worker.recipes)  # a bad --steps or --guidance stops here
    preset = get_preset(cfg.engine.preset)
    if preset.is_random_weights:
        print(f"svibot: preset {preset.label}: the output is noise from random weights; it only "
              "exercises the pipeline. Use a real preset (e.g. --preset q4_k_m) on a GPU.", file=sys.stderr)

    async with await JobQueue.open(cfg.queue, cfg.data_dir.photos) as queue:
        # 2. Queue it like any front end would.
        job = await queue.enqueue(NewJob(platform="cli", chat_id="local", user_id=getpass.getuser(),
                                         photo=photo, prompts=prompts, settings=settings), cfg.limits)
        print(f"svibot: job #{job.id} queued ({len(prompts)} segments, preset {preset.name}, seed {args.seed})",
              file=sys.stderr)
        # 3. Run the worker here until our job ends, and follow its events.
        worker = Worker(queue, replace(cfg.worker, progress_interval_s=0.25))
        worker_task = asyncio.create_task(worker.run(stop, until_job=job.id))
        try:
            outcome = await follow(queue, job.id, len(prompts), worker_task)
        except BaseException:  # e.g. a full disk under the outbox's own writes: stop the worker first
            stop.set()
            await asyncio.gather(worker_task, return_exceptions=True)
            raise
        await worker_task  # a full disk ends the command here, the job paused for `svibot worker --once`
        final = await queue.get_job(job.id)
        segments = await queue.segments(job.id)
        final_file = await queue.local_file(final.final_path) if final.state == "done" else None

    if interrupted and final.state not in TERMINAL:
        print(f"svibot: interrupted; job #{job.id} stays queued with {len(segments)} segment(s) done. "
              f"`svibot worker --once` resumes it; `svibot jobs cancel {job.id}` drops it.", file=sys.stderr)
        return 130
    if final.state == "done" and args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final_file, args.out)
    if final.state == "done":
        print(f"story: {args.out or final.final_path}")
    else:
        print(f"svibot: job #{job.id} {final.state}: {final.error or 'cancelled'}", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "job_id": job.id, "state": final.state, "preset": preset.name, "error": final.error,
            "segments": [s.video_path for s in segments],
            "frames": [s.num_frames for s in segments],
            "seconds_per_segment": [round(s.gen_seconds, 3) for s in segments],
            "final_path": final.final_path,
            "final_frames": outcome.get("num_frames"),  # counted from the stitched file by the worker
        }))
    return 0 if final.state == "done" else 1


async def follow(queue: JobQueue, job_id: int, num_segments: int, worker_task: asyncio.Task) -> dict:
    """Draw progress bars from the job's cli events and print each segment as it lands.

    Returns the payload of the job's final event ({} if the worker stopped first)."""
    outcome: dict = {}
    seg_bar = tqdm(total=num_segments, desc="segments", unit="seg", position=0, file=sys.stderr, leave=True)
    step_bar = tqdm(total=1, desc="steps", unit="step", position=1, file=sys.stderr, leave=False)
    try:
        while True:
            for event in await queue.pending_events("cli", job_id=job_id):
                p = event.payload
                if event.kind == "progress" and "paused" in p:
                    pass  # the worker stops too; the command's last line says why
                elif event.kind == "progress":
                    desc = f"segment {p['segment'] + 1}/{p['num_segments']}"
                    if step_bar.desc != desc:  # a new segment restarts the step bar and its rate
                        step_bar.reset(total=p["num_steps"])
                        step_bar.set_description(desc)
                    step_bar.update(max(0, p["step"] - step_bar.n))
                elif event.kind == "segment":
                    step_bar.update(max(0, (step_bar.total or 0) - step_bar.n))  # its last steps were throttled away
                    seg_bar.update(1)
                    tqdm.write(f"segment {p['index'] + 1}/{p['num_segments']}: {p['video_path']}", file=sys.stdout)
                    sys.stdout.flush()
                elif event.kind in TERMINAL:
                    outcome = p
                await queue.mark_delivered(event.id)
            job = await queue.get_job(job_id)
            if job.state in TERMINAL:
                if not await queue.pending_events("cli", job_id=job_id):
                    return outcome  # every event of the finished job was shown
            elif worker_task.done():
                return outcome  # the worker stopped (a signal) and left the job queued
            await asyncio.sleep(0.1)
    finally:
        step_bar.close()
        seg_bar.close()
