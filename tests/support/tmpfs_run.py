"""Runs inside `unshare --user --map-root-user --mount` (root of a private mount namespace): each
case mounts a tmpfs of a given size, so every write past it fails with the kernel's own ENOSPC, runs
one writer there, and copies what it left (files, stderr, results) to OUT on the real disk for the
test to check. The mounts vanish with the namespace.

    python -m tests.support.tmpfs_run SPEC.json OUT

SPEC is a list of {"name", "kind", "size"}; kinds: story (`svibot story`, then, if it queued the job,
`svibot worker --once` with the space back), text_cache, snapshot, download.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOM_AGAIN = "64m"  # the space freed for the resume


def mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@contextlib.contextmanager
def stderr_to(path: Path):
    """Everything written to fd 2 (sys.stderr, logging, tqdm, C libraries) goes to `path`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def copy_out(src: Path, dst: Path) -> None:
    if src.exists():
        shutil.copytree(src, dst)


def run_story(case: dict, mnt: Path, out: Path) -> dict:
    from svibot.cli import main
    from tests.faults.conftest import story_argv, worker_once_argv

    data = mnt / "data"
    with stderr_to(out / "fault.err"):
        rc = main(story_argv(data))
    copy_out(data, out / "fault")
    if not ((data / "queue.sqlite3").exists() and _has_job(data / "queue.sqlite3")):
        return {"rc": rc, "resume_rc": None}  # nothing was queued: running it again is a fresh story
    remount(mnt, ROOM_AGAIN)
    with stderr_to(out / "resume.err"):
        again = main(worker_once_argv(data))
    copy_out(data, out / "resumed")
    return {"rc": rc, "resume_rc": again}


def _has_job(db: Path) -> bool:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] > 0
        except sqlite3.Error:
            return False


def run_text_cache(case: dict, mnt: Path, out: Path) -> dict:
    import torch

    from engine.models.text_cache import TextCache

    cache = TextCache(mnt / "text", "umt5@512")
    embedding = torch.randn(512, 256)  # (L, text_dim), 512 KiB: more than the tmpfs holds
    result = _raised(lambda: cache.put("a man walks", embedding))
    result["left"] = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_file())
    return result


def run_snapshot(case: dict, mnt: Path, out: Path) -> dict:
    from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig
    from storage.backup import snapshot_loop
    from tests.faults.conftest import PHOTO

    data = DataDir(out / "queue")  # the live queue is on the real disk; the "mount" is the tmpfs

    async def go() -> None:
        async with await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos) as queue:
            for i in range(40):  # rows enough that the snapshot outgrows the tmpfs
                await queue.enqueue(NewJob(platform="cli", chat_id="c", user_id="u", photo=PHOTO.read_bytes(),
                                           prompts=[f"walk {i} " + "far " * 100], settings={"seed": i}), Limits())
        stop = asyncio.Event()
        stop.set()
        await snapshot_loop(data.db_path, mnt / "queue.sqlite3", 60.0, stop)

    with _log_lines("storage.backup") as lines:
        result = _raised(lambda: asyncio.run(go()))
    result["log"] = lines
    result["left"] = sorted(p.name for p in mnt.iterdir())
    return result


def run_download(case: dict, mnt: Path, out: Path) -> dict:
    from engine.models.download import download_preset
    from tests.engine.models.test_model_download import PRESET
    from tests.support.fake_hub import FakeHub

    repos = {"org/wan-gguf": {"HighNoise/high.gguf": os.urandom(16 * 1024),
                              "LowNoise/low.gguf": os.urandom(1024 * 1024)}}  # the second one does not fit
    with FakeHub(repos) as hub:
        result = _raised(lambda: download_preset(PRESET, mnt, endpoint=hub.endpoint, progress=False, token=None))
    result["left"] = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_file() or p.is_symlink())
    return result


def _raised(call) -> dict:
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - reported to the test, which decides
        return {"raised": type(err).__name__, "message": str(err), "mro": [c.__name__ for c in type(err).__mro__],
                "cause": repr(err.__cause__), "traceback": traceback.format_exc()}
    return {"raised": None}


@contextlib.contextmanager
def _log_lines(name: str):
    lines: list[dict] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append({"level": record.levelname, "message": record.getMessage(), "exc": bool(record.exc_info)})

    handler = Keep()
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # an earlier `svibot` command may have set the root to ERROR
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


RUNNERS = {"story": run_story, "text_cache": run_text_cache, "snapshot": run_snapshot, "download": run_download}


def main(spec_path: str, out_root: str) -> int:
    cases = json.loads(Path(spec_path).read_text())
    work = Path(out_root) / "mnt"
    for case in cases:
        out = Path(out_root) / case["name"]
        out.mkdir(parents=True)
        mnt = work / case["name"]
        mount(mnt, case["size"])
        started = time.monotonic()
        result = RUNNERS[case["kind"]](case, mnt, out)
        result["seconds"] = round(time.monotonic() - started, 2)
        (out / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
