"""`svibot`: the command line and the single composition root that wires bots, queue and engine.

Exit codes: 0 done, 1 failed, 2 bad arguments or input (also a token the platform rejects),
130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from storage import JobQueue, SvibotError
from storage.errors import DatabaseFull, DiskFull, InputError
from storage.redact import redact

from . import logs
from . import __version__
from .config import AppConfig, build_config

log = logging.getLogger("svibot")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# After SIGTERM, `serve` waits this long: the bots' outboxes finish or cancel the delivery in flight
# (their own grace is shorter) and the worker stops at its next denoising step. A worker still busy
# then (a slow step) is abandoned: its job goes back to the queue and resumes at the next start.
SERVE_STOP_S = 20.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str) -> str:
    """argparse type for --log-level (and SVIBOT_LOG_LEVEL, its default): a name, any case."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svibot", description="Photo + story -> long video (SVI 2.0 Pro on Wan 2.2 I2V A14B).")
    parser.add_argument("--data-dir", help="queue, photos, videos and model cache (env SVIBOT_DATA_DIR; default ./svibot-data)")
    parser.add_argument("--version", action="version", version=f"svibot {__version__}")
    parser.add_argument("--log-level", type=log_level, default=os.environ.get("SVIBOT_LOG_LEVEL") or "INFO",
                        help=f"{', '.join(LOG_LEVELS)} (env SVIBOT_LOG_LEVEL; default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database-url", metavar="URL",
                       help="postgresql://... to share one queue between machines (env SVIBOT_DATABASE_URL); "
                            "unset: SQLite in the data dir")

    def engine_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", help="tiny, q3_k_m, q4_k_s, q4_k_m, q5_k_m, q6_k, q8_0 (env SVIBOT_PRESET)")
        p.add_argument("--vram-budget", type=float, metavar="GIB", help="VRAM the engine may use (env SVIBOT_VRAM_BUDGET)")
        p.add_argument("--ram-budget", type=float, metavar="GIB", help="host RAM for weights (env SVIBOT_RAM_BUDGET)")
        p.add_argument("--model-file", action="append", metavar="KEY=VALUE",
                       help="override a model repo or filename, e.g. high_repo=me/wan (repeatable)")
        p.add_argument("--recipe", action="append", metavar="NAME:KEY=VALUE,...",
                       help="change a sampling recipe for every job, e.g. fast:steps=6,guidance=1.5 "
                            "(repeatable; env SVIBOT_RECIPE_FAST, SVIBOT_RECIPE_QUALITY)")

    p = sub.add_parser("story", help="run one story end to end on this machine")
    p.add_argument("photo", type=Path)
    p.add_argument("story", help='prompts separated by "|", e.g. "walk | run | fly"')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, dest="num_inference_steps", help="denoising steps per segment")
    p.add_argument("--guidance", type=float, help="guidance on both experts (1 = none)")
    p.add_argument("--guidance-high", type=float, help="guidance on the high-noise expert")
    p.add_argument("--guidance-low", type=float, help="guidance on the low-noise expert")
    p.add_argument("--quality", choices=["fast", "quality"],
                   help="fast (default): 4 steps, no guidance, LightX2V; "
                        "quality: SVI 2.0 Pro's own 50 steps, guidance 5, no LightX2V")
    p.add_argument("--chaining", choices=["svi-pro", "last-frame"])
    p.add_argument("--loop", action="store_true", default=None,
                   help="end on the first frame, so the video plays seamlessly on repeat (changes the last segment)")
    p.add_argument("--loop-strength", type=float, metavar="S", help="with --loop: end strength in (0, 1], default 1")
    p.add_argument("--color-match", choices=["off", "anchor"], help="anchor: later segments take the photo's colours")
    p.add_argument("--out", type=Path, help="copy the stitched video here")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--download", action="store_true", help="fetch the preset's missing model files first")
    p.add_argument("--no-worker", action="store_true",
                   help="only queue the story and follow it; a running `svibot worker` (models kept loaded) "
                        "runs it. Interrupting cancels the job.")
    engine_flags(p)

    p = sub.add_parser("worker", help="run the GPU worker on the queue")
    p.add_argument("--once", action="store_true",
                   help="drain the queue (wait while other workers still hold jobs), then exit")
    p.add_argument("--serve-presets", metavar="NAMES",
                   help="claim only jobs naming these presets (comma-separated) or none (env SVIBOT_SERVE_PRESETS); "
                        "default: any")
    db_flag(p)
    engine_flags(p)

    p = sub.add_parser("serve", help="run the Telegram and/or Discord bot (and the worker)")
    p.add_argument("--telegram", action="store_true")
    p.add_argument("--discord", action="store_true")
    p.add_argument("--no-worker", action="store_true", help="bots only; a worker runs elsewhere")
    p.add_argument("--snapshot-to", type=Path, help="periodically copy the queue DB here (e.g. Google Drive)")
    p.add_argument("--snapshot-every", type=float, default=300.0, metavar="SECONDS")
    db_flag(p)
    engine_flags(p)

    p = sub.add_parser("download", help="fetch a preset's model files into the cache")
    p.add_argument("--dry-run", action="store_true", help="show files, sizes and free disk; fetch nothing")
    engine_flags(p)

    p = sub.add_parser("jobs", help="list, show or cancel jobs")
    p.add_argument("action", nargs="?", default="list", choices=["list", "show", "cancel"])
    p.add_argument("job_id", nargs="?", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20)
    db_flag(p)

    p = sub.add_parser("workers", help="list the GPU workers and what each is doing")
    p.add_argument("--json", action="store_true")
    db_flag(p)

    p = sub.add_parser("stats", help="usage: stories and segments per day, seconds per segment, failures, users")
    p.add_argument("--days", type=int, default=7, help="how many UTC days back, today included (default 7)")
    p.add_argument("--json", action="store_true")
    db_flag(p)

    p = sub.add_parser("db", help="upgrade the queue database, or print a PostgreSQL worker role's grants")
    p.add_argument("action", choices=["upgrade", "worker-role"])
    p.add_argument("role", nargs="?", help="worker-role: the PostgreSQL role to grant a worker's rights")
    db_flag(p)
    return parser


# -- jobs ------------------------------------------------------------------------------------
async def job_json(queue: JobQueue, job_id: int) -> dict:
    job = await queue.get_job(job_id)
    segs = await queue.segments(job_id)
    return {"id": job.id, "state": job.state, "platform": job.platform, "prompts": job.prompts,
            "settings": job.settings, "attempts": job.attempts, "error": job.error,
            "final_path": job.final_path, "created_at": job.created_at,
            "segments": [{"index": s.index, "video_path": s.video_path, "carry_path": s.carry_path,
                          "num_frames": s.num_frames, "duration_s": s.duration_s,
                          "gen_seconds": s.gen_seconds} for s in segs]}


async def cmd_jobs(cfg: AppConfig, args: argparse.Namespace) -> int:
    if args.action in ("show", "cancel") and args.job_id is None:
        print(f"svibot jobs {args.action} needs a job id", file=sys.stderr)
        return EXIT_USAGE
    async with await JobQueue.open(cfg.queue, cfg.data_dir.photos, listen=False) as queue:
        if args.action == "cancel":
            job = await queue.cancel(args.job_id, is_admin=True)
            print(f"job #{job.id}: {'cancel requested' if job.state == 'running' else job.state}")
            return EXIT_OK
        ids = [args.job_id] if args.action == "show" else [j.id for j in await queue.list_jobs(limit=args.limit)]
        rows = [await job_json(queue, i) for i in ids]
    if args.json:
        print(json.dumps(rows[0] if args.action == "show" else rows, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        print("no jobs")
    for r in rows:
        print(f"#{r['id']:<5} {r['state']:<9} {len(r['segments'])}/{len(r['prompts'])} segments  "
              f"{' | '.join(r['prompts'])[:60]}" + (f"  error: {r['error']}" if r["error"] else ""))
        if args.action == "show":
            for s in r["segments"]:
                print(f"       segment {s['index'] + 1}: {s['video_path']} ({s['num_frames']} frames)")
            if r["final_path"]:
                print(f"       story: {r['final_path']}")
    return EXIT_OK


async def cmd_workers(cfg: AppConfig, args: argparse.Namespace) -> int:
    async with await JobQueue.open(cfg.queue, cfg.data_dir.photos, listen=False) as queue:
        workers = await queue.workers()
    if args.json:
        print(json.dumps([w.to_dict() for w in workers]))
        return EXIT_OK
    if not workers:
        print("no workers have registered")
    now = time.time()
    for w in workers:
        vram = f"{w.vram_gib:g} GiB" if w.vram_gib else "-"
        print(f"{w.host}:{w.pid:<7} {w.gpu or '?':<18} {vram:>9}  {w.preset or '-':<8} "
              f"seen {max(0.0, now - w.seen_at):5.0f} s ago  {w.doing()}")
    return EXIT_OK


async def cmd_stats(cfg: AppConfig, args: argparse.Namespace) -> int:
    if args.days < 1:
        print(f"svibot stats: --days is {args.days}; it must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    from bot.admin_texts import stats_text

    async with await JobQueue.open(cfg.queue, cfg.data_dir.photos, listen=False) as queue:
        report = await queue.usage_report(days=args.days)
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else str(stats_text(report)))
    return EXIT_OK


async def cmd_db(cfg: AppConfig, args: argparse.Namespace) -> int:
    if args.action == "worker-role":
        if not args.role:
            print("svibot db worker-role needs a role name, e.g. `svibot db worker-role svibot_worker`",
                  file=sys.stderr)
            return EXIT_USAGE
        from storage.pg_roles import worker_grants
        print("\n".join(f"{stmt};" for stmt in worker_grants(args.role)))
        return EXIT_OK
    before, after = await JobQueue.upgrade(cfg.queue, cfg.data_dir.photos)
    where = describe_queue(cfg)
    print(f"{where}: schema version {after} (was {before})" if before != after
          else f"{where}: already at schema version {after}")
    return EXIT_OK


def describe_queue(cfg: AppConfig) -> str:
    """Where the queue lives, safe to print (no password)."""
    if cfg.queue.database_url:
        from storage.dburl import redact
        return f"PostgreSQL at {redact(cfg.queue.database_url)}"
    return f"SQLite at {cfg.queue.db_path}"


def _stop_on_signals(stop: asyncio.Event, interrupted: list[int]) -> None:
    loop = asyncio.get_running_loop()

    def handler(signum: int) -> None:
        interrupted.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler, sig)


# -- worker and serve ------------------------------------------------------------------------
async def cmd_worker(cfg: AppConfig, args: argparse.Namespace) -> int:
    from engine.worker import Worker

    stop, interrupted = asyncio.Event(), []
    _stop_on_signals(stop, interrupted)
    log.info("worker on the queue at %s", describe_queue(cfg))
    async with await JobQueue.open(cfg.queue, cfg.data_dir.photos) as queue:
        ran = await Worker(queue, cfg.worker).run(stop, once=args.once)
    log.info("worker ran %d job(s)%s", ran, "; stopped by a signal" if interrupted else "")
    return EXIT_OK  # SIGTERM/SIGINT is the normal way to stop a long-running worker


async def cmd_serve(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Bots and (unless --no-worker) the worker in one process, around one queue."""
    from engine.worker import Worker
    from storage.redact import add_secret

    if not (args.telegram or args.discord):
        print("svibot serve needs --telegram and/or --discord", file=sys.stderr)
        return EXIT_USAGE
    if args.snapshot_to and cfg.queue.database_url:
        print("svibot serve: --snapshot-to copies the SQLite queue; with a PostgreSQL queue use the "
              "database's own backups (pg_dump)", file=sys.stderr)
        return EXIT_USAGE
    platforms = []  # a missing token or a malformed setting raises BadSetting, naming it
    if args.telegram:
        from bot.telegram import run_telegram
        platforms.append((run_telegram, cfg.telegram()))
    if args.discord:
        from bot.discord_app import run_discord
        platforms.append((run_discord, cfg.discord()))
    for _, conf in platforms:
        add_secret(conf.token)
    stop, interrupted = asyncio.Event(), []
    _stop_on_signals(stop, interrupted)
    if args.snapshot_to:
        from storage.backup import restore
        if restore(args.snapshot_to, cfg.queue.db_path):
            log.info("restored the queue from %s", args.snapshot_to)
    worker = None
    log.debug("serving the queue at %s", describe_queue(cfg))  # INFO stays quiet until the bots are up
    async with await JobQueue.open(cfg.queue, cfg.data_dir.photos) as queue:
        tasks = [asyncio.create_task(run(conf, cfg.bot, queue, cfg.data_dir, stop)) for run, conf in platforms]
        if not args.no_worker:
            worker = Worker(queue, cfg.worker)
            tasks.append(asyncio.create_task(worker.run(stop)))
        if args.snapshot_to:
            from storage.backup import snapshot_loop
            tasks.append(asyncio.create_task(
                snapshot_loop(cfg.queue.db_path, args.snapshot_to, args.snapshot_every, stop)))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)  # a signal, or a task ended
        stop.set()
        _, busy = await asyncio.wait(tasks, timeout=SERVE_STOP_S)
        if busy:
            log.warning("still busy %.0f s after the stop; cancelling what is left; work in flight resumes "
                        "at the next start", SERVE_STOP_S)
            for task in busy:
                task.cancel()
            await asyncio.wait(busy, timeout=2.0)
            if worker is not None:
                await _release_leases(queue, worker)
        failed = next((t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
        if failed is not None:
            raise failed
    log.info("svibot serve stopped%s", " by a signal" if interrupted else "")
    if busy and worker is not None:
        # The engine thread may be mid-step and cannot be interrupted; waiting for it would take
        # the process past the bound, so exit now (the queue is closed, its job released).
        logging.shutdown()
        os._exit(EXIT_OK)
    return EXIT_OK


async def _release_leases(queue: JobQueue, worker) -> None:
    """Give the abandoned worker's running jobs back to the queue without counting an attempt."""
    for job in await queue.list_jobs(["running"], limit=1000):
        if job.lease_owner == worker.me.owner:
            await queue.release(job.id, worker.me)
            log.info("job #%d released for the next start", job.id)


async def cmd_download(cfg: AppConfig, args: argparse.Namespace) -> int:
    import shutil

    from engine.models.download import download_preset
    from engine.models.presets import get_preset

    preset = get_preset(cfg.engine.preset)
    if preset.files is None:
        print(f"preset {preset.label} is built in code; nothing to download", file=sys.stderr)
        return EXIT_OK
    files = preset.files.with_overrides(cfg.engine.file_overrides)
    cfg.data_dir.models.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cfg.data_dir.models).free
    print(f"preset {preset.name}: {preset.total_bytes / 1e9:.1f} GB in all; {free / 1e9:.1f} GB free under "
          f"{cfg.data_dir.models}", file=sys.stderr)
    for part, repo, target in files.items():
        print(f"  {part:<14} {preset.sizes.get(part, 0) / 1e9:6.2f} GB  {repo}/{target}", file=sys.stderr)
    report = _fit_report(cfg, preset)
    if report:
        print(report, file=sys.stderr)
    if args.dry_run:
        return EXIT_OK
    paths = await asyncio.to_thread(download_preset, preset, cfg.data_dir.models,
                                    file_overrides=cfg.engine.file_overrides,
                                    token=os.environ.get("HF_TOKEN") or None,
                                    endpoint=os.environ.get("HF_ENDPOINT") or None)
    for part, path in paths.items():
        print(f"{part}: {path}")
    return EXIT_OK


def _fit_report(cfg: AppConfig, preset) -> str | None:
    """Whether the preset fits this machine's (or the given) budgets without disk reads, and what does."""
    import torch

    from engine.models.fit import budgets, fit_report

    e = cfg.engine
    if not torch.cuda.is_available() and (e.vram_budget_gib is None or e.ram_budget_gib is None):
        return None  # no GPU and no budgets given: nothing to measure against
    return fit_report(preset, *budgets(e.vram_budget_gib, e.ram_budget_gib), use_loras=e.use_loras)


async def cmd_story(cfg: AppConfig, args: argparse.Namespace) -> int:
    from .story import run_story

    stop, interrupted = asyncio.Event(), []
    _stop_on_signals(stop, interrupted)
    return await run_story(cfg, args, stop, interrupted)


COMMANDS = {"jobs": cmd_jobs, "worker": cmd_worker, "serve": cmd_serve, "download": cmd_download,
            "story": cmd_story, "workers": cmd_workers, "db": cmd_db, "stats": cmd_stats}


# What to run once space is freed; a story's work is resumed by any worker.
AFTER_FREEING = {"download": "`svibot download` fetches the files still missing",
                 "serve": "`svibot serve` starts where it stopped"}


def disk_full_line(err: DiskFull, cfg: AppConfig | None, command: str | None = None) -> str:
    then = AFTER_FREEING.get(command or "", "`svibot worker --once` finishes the work")
    if isinstance(err, DatabaseFull):  # the server's disk, not this machine's
        return f"{err}; nothing was lost: after freeing space on the database server {then}"
    where = cfg.data_dir.root if cfg is not None else Path(str(err.path)).parent
    return (f"the data dir {where} is out of disk space ({err.free / 2**20:.1f} MiB free; free at least "
            f"{err.needed / 2**20:.0f} MiB), writing {err.path}; nothing was lost: after freeing space {then}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # photos, videos and the queue are user data: readable by the service user only
    logs.setup(args.log_level, os.environ)
    if getattr(args, "database_url", None):  # a URL given as a flag has a password to hide too
        from storage.redact import add_secret, secrets_from_env
        for secret in secrets_from_env({"SVIBOT_DATABASE_URL": args.database_url}):
            add_secret(secret)
    cfg = None
    try:
        cfg = build_config(args, os.environ)
        return asyncio.run(COMMANDS[args.command](cfg, args))
    except DiskFull as err:  # the same one line wherever the write was: no traceback
        sys.stderr.write(f"svibot: {disk_full_line(err, cfg, args.command)}\n")
        return EXIT_FAILED
    except InputError as err:  # one line, no traceback: e.g. "the Telegram token was rejected; ..."
        sys.stderr.write(f"svibot: {redact(err)}\n")  # one write: a logging thread cannot split the line
        return EXIT_USAGE
    except SvibotError as err:
        sys.stderr.write(f"svibot: {redact(err)}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
