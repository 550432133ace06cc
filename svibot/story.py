"""`svibot story`: queue one story as a `cli` job and follow it from the queue's outbox like any other
front end would. By default this process runs that one job itself (other queued jobs stay for
`svibot worker`); with `--no-worker` a worker running elsewhere (kept warm, models loaded) runs it.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import shutil
import sys
import time
from dataclasses import replace

from tqdm import tqdm

from storage import JobQueue, NewJob, parse_prompts
from storage.errors import NotAnImage

from .config import AppConfig
from engine.models.presets import GB, Preset, get_preset
from engine.worker import Worker, resolve_settings

SETTING_FLAGS = ("num_inference_steps", "guidance_high", "guidance_low", "chaining", "quality", "loop", "loop_strength",
                 "color_match")
TERMINAL = ("done", "failed", "cancelled")
ACTIVE = ("queued", "running")
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def say(message: str) -> None:
    tqdm.write(f"svibot: {message}", file=sys.stderr)


def story_settings(cfg: AppConfig, args: argparse.Namespace) -> dict:
    settings = {"seed": args.seed, "preset": cfg.engine.preset}
    if getattr(args, "guidance", None) is not None:  # both experts; --guidance-high/--guidance-low win
        settings.update(guidance_high=args.guidance, guidance_low=args.guidance)
    settings.update({k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None})
    return settings


async def ensure_model_files(cfg: AppConfig, preset: Preset, download: bool) -> bool:
    """True when every file of the preset is in the cache (after fetching them, with `download`).

    Otherwise names each missing file and its size, says how to fetch them, and returns False.
    """
    from engine.models.download import download_preset, missing_parts

    if preset.files is None:
        return True
    files = preset.files.with_overrides(cfg.engine.file_overrides)
    missing = await asyncio.to_thread(missing_parts, preset, files, cfg.data_dir.models)
    if not missing:
        return True
    total = sum(size for *_, size in missing)
    lines = [f"  {part:<14} {size / GB:6.2f} GB  {repo}/{target}" for part, repo, target, size in missing]
    if not download:
        print(f"svibot: preset {preset.name} needs {len(missing)} model file(s) that are not in "
              f"{cfg.data_dir.models} yet ({total / GB:.1f} GB):\n" + "\n".join(lines) +
              f"\nFetch them first with `svibot download --preset {preset.name}`, or add --download "
              "to this command.", file=sys.stderr)
        return False
    print(f"svibot: downloading {total / GB:.1f} GB for preset {preset.name} first:\n" + "\n".join(lines),
          file=sys.stderr)
    await asyncio.to_thread(download_preset, preset, cfg.data_dir.models, file_overrides=cfg.engine.file_overrides,
                            token=os.environ.get("HF_TOKEN") or None, endpoint=os.environ.get("HF_ENDPOINT") or None)
    return True


async def describe_others(queue: JobQueue, jobs: list) -> str:
    parts = []
    for j in jobs:
        done = len(await queue.segments(j.id))
        parts.append(f"#{j.id} ({j.platform}, {j.state}, {done}/{j.num_segments} segments done)")
    return ", ".join(parts)


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
        say(f"preset {preset.label}: the output is noise from random weights; it only exercises the "
            "pipeline. Use a real preset (e.g. --preset q4_k_m) on a GPU.")
    if not args.no_worker and not await ensure_model_files(cfg, preset, args.download):
        return EXIT_FAILED

    async with await JobQueue.open(cfg.queue, cfg.data_dir.photos) as queue:
        # 2. Queue it like any front end would.
        others = await queue.list_jobs(states=ACTIVE)
        job = await queue.enqueue(NewJob(platform="cli", chat_id="local", user_id=getpass.getuser(),
                                         photo=photo, prompts=prompts, settings=settings), cfg.limits)
        say(f"job #{job.id} queued ({len(prompts)} segments, preset {preset.name}, seed {args.seed})")
        if others and not args.no_worker:
            say(f"earlier job(s) {await describe_others(queue, others)} stay in the queue for `svibot worker`; "
                f"this command runs only job #{job.id}. `svibot jobs cancel ID` drops one.")
        # 3. Run our job here (or let the worker elsewhere run it) and follow its events.
        if args.no_worker:
            if not (await queue.stats()).workers_online:
                say("no worker is online; the job waits until `svibot worker` runs")
            worker_task = asyncio.create_task(stop.wait())
        else:
            worker = Worker(queue, replace(cfg.worker, progress_interval_s=0.25))
            worker_task = asyncio.create_task(worker.run(stop, until_job=job.id))
        try:
            outcome = await follow(queue, job.id, len(prompts), worker_task)
        except BaseException:  # e.g. a full disk under the outbox's own writes: stop the worker first
            stop.set()
            await asyncio.gather(worker_task, return_exceptions=True)
            raise
        if args.no_worker and interrupted and (await queue.get_job(job.id)).state in ACTIVE:
            # The worker elsewhere would go on with it and hold up the next story: stopping means cancel.
            await queue.cancel(job.id, is_admin=True)
            say(f"interrupted; job #{job.id} cancelled (its finished segments are kept)")
        if args.no_worker:
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
        else:
            await worker_task  # a full disk ends the command here, the job paused for `svibot worker --once`
        final = await queue.get_job(job.id)
        segments = await queue.segments(job.id)
        final_file = await queue.local_file(final.final_path) if final.state == "done" else None

    if interrupted and args.no_worker and final.state != "done":
        return EXIT_INTERRUPTED
    if interrupted and final.state in ACTIVE:
        say(f"interrupted; job #{job.id} stays queued with {len(segments)} segment(s) done. "
            f"`svibot worker --once` resumes it; `svibot jobs cancel {job.id}` drops it.")
        return EXIT_INTERRUPTED
    if final.state == "done" and args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final_file, args.out)
    if final.state == "done":
        print(f"story: {args.out or final.final_path}")
    elif interrupted:
        return EXIT_INTERRUPTED
    else:
        say(f"job #{job.id} {final.state}: {final.error or 'cancelled'}")
    if args.json:
        print(json.dumps({
            "job_id": job.id, "state": final.state, "preset": preset.name, "error": final.error,
            "segments": [s.video_path for s in segments],
            "frames": [s.num_frames for s in segments],
            "seconds_per_segment": [round(s.gen_seconds, 3) for s in segments],
            "final_path": final.final_path,
            "final_frames": outcome.get("num_frames"),  # counted from the stitched file by the worker
        }))
    return EXIT_OK if final.state == "done" else EXIT_FAILED


async def waiting_line(queue: JobQueue, job_id: int) -> str | None:
    """What holds a queued job up: the jobs ahead of it and how far the running one is."""
    ahead = [j for j in await queue.list_jobs(states=ACTIVE) if j.id < job_id]
    if not ahead:
        return None
    running = [j for j in ahead if j.state == "running"]
    head = running[0] if running else ahead[0]
    done = len(await queue.segments(head.id))
    return (f"waiting: {len(ahead)} job(s) ahead; #{head.id} ({head.platform}) is {head.state} at "
            f"{done}/{head.num_segments} segments")


async def follow(queue: JobQueue, job_id: int, num_segments: int, worker_task: asyncio.Task) -> dict:
    """Draw progress bars from the job's cli events and print each segment as it lands; while the
    job waits behind others, say what it waits for.

    Returns the payload of the job's final event ({} if the worker stopped first)."""
    outcome: dict = {}
    seg_bar = tqdm(total=num_segments, desc="segments", unit="seg", position=0, file=sys.stderr, leave=True)
    step_bar = tqdm(total=1, desc="steps", unit="step", position=1, file=sys.stderr, leave=False)
    last_wait, next_wait_check = None, 0.0
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
            elif job.state == "queued" and time.monotonic() >= next_wait_check:
                next_wait_check = time.monotonic() + 2.0
                line = await waiting_line(queue, job_id)
                if line and line != last_wait:
                    say(line)
                last_wait = line
            await asyncio.sleep(0.1)
    finally:
        step_bar.close()
        seg_bar.close()
