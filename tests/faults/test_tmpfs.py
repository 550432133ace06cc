"""The full-disk matrix for real: a tmpfs of a few hundred KiB mounted in a private user and mount
namespace (`unshare --user --map-root-user --mount`), so the writes fail with the kernel's own ENOSPC
instead of an injected one. `tests/support/tmpfs_run.py` runs every case in one child process inside
the namespace and copies what each left to the real disk; the checks here are the matrix's: one
line naming the data dir, no traceback, no half-written file, an intact database with the job
paused (not failed), and after the space is back the same frames as an uninterrupted run.

Skipped where user namespaces or tmpfs mounts in them are not allowed (some CI runners and
containers), with the reason."""
from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from engine.resume import load_carry, video_ok
from tests.support.faults import SAFETENSORS_FULL, half_written, integrity, job_rows, segment_rows

from .conftest import REPO, final_frames

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]
# The tmpfs sizes put the first full write at three different points of the tiny story (measured:
# the database's first pages, segment 2's carry latent, the commit that marks the story done).
STORIES = {"database creation": "64k", "segment 2 carry": "384k", "done commit": "512k"}
OTHERS = [{"name": "text cache", "kind": "text_cache", "size": "64k"},
          {"name": "snapshot", "kind": "snapshot", "size": "64k"},
          {"name": "download", "kind": "download", "size": "256k"}]


def why_not_tmpfs() -> str | None:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare(1) or mount(8) is not installed (util-linux)"
    with tempfile.TemporaryDirectory() as where:
        probe = subprocess.run([*UNSHARE, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", where],
                               capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return ("this machine does not allow mounting a tmpfs in a user namespace "
                f"(`{' '.join(UNSHARE)} mount -t tmpfs ...` said: {probe.stderr.strip() or probe.returncode})")
    return None


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory) -> Path:
    reason = why_not_tmpfs()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("tmpfs")
    spec = [{"name": n, "kind": "story", "size": s} for n, s in STORIES.items()] + OTHERS
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([*UNSHARE, sys.executable, "-m", "tests.support.tmpfs_run", str(root / "spec.json"),
                          str(root / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return root / "out"


def result(out: Path, name: str) -> dict:
    return json.loads((out / name / "result.json").read_text())


@pytest.mark.parametrize("name", list(STORIES))
def test_story_on_a_full_tmpfs_pauses_and_resumes(name, tmpfs, reference):
    case, out = result(tmpfs, name), tmpfs / name
    inside = tmpfs / "mnt" / name / "data"  # the data dir's path inside the namespace
    err = (out / "fault.err").read_text()
    assert case["rc"] == 1, f"the story fitted in {STORIES[name]}; shrink the tmpfs\n{err[-2000:]}"
    assert "Traceback" not in err
    full = [line for line in err.splitlines() if "out of disk space" in line]
    assert len(full) == 1 and full[0].startswith(f"svibot: the data dir {inside} is out of disk space ("), err
    assert full[0].endswith("nothing was lost: after freeing space `svibot worker --once` finishes the work")

    fault = out / "fault"
    assert half_written(fault) == []
    jobs = job_rows(fault / "queue.sqlite3")
    if not jobs:  # refused before anything was queued: the photo is not kept either
        assert not [p for p in fault.rglob("*") if p.is_file() and "photos" in p.parts]
        assert case["resume_rc"] is None  # running it again is a fresh story, as the matrix shows
        return
    # queued: paused, not failed, nothing recorded that is not on disk
    assert integrity(fault / "queue.sqlite3") == "ok"
    (job_id, state, attempts), = jobs
    assert (state, attempts) == ("queued", 0), full[0]
    with sqlite3.connect(fault / "queue.sqlite3") as conn:
        last = conn.execute("SELECT kind, payload FROM events ORDER BY id DESC LIMIT 1").fetchone()
    assert last[0] == "progress" and "disk is full" in json.loads(last[1])["paused"]
    for idx, video, carry in segment_rows(fault / "queue.sqlite3", job_id):  # paths inside the namespace
        video, carry = (fault / Path(p).relative_to(inside) for p in (video, carry))
        assert video_ok(video, 13 if idx == 0 else 8) and load_carry(carry) is not None
    assert case["resume_rc"] == 0, (out / "resume.err").read_text()[-2000:]
    resumed = out / "resumed"
    assert job_rows(resumed / "queue.sqlite3")[0][1:] == ("done", 0)
    assert half_written(resumed) == []
    np.testing.assert_array_equal(final_frames(resumed), reference)


def test_the_story_cases_stop_at_different_writes(tmpfs):
    points = set()
    for name in STORIES:
        line = next(x for x in (tmpfs / name / "fault.err").read_text().splitlines() if "out of disk space" in x)
        jobs = job_rows(tmpfs / name / "fault" / "queue.sqlite3")
        recorded = len(segment_rows(tmpfs / name / "fault" / "queue.sqlite3", 1)) if jobs else None
        points.add((Path(line.split(", writing ")[1].split(";")[0]).name, recorded))
    assert len(points) == len(STORIES), points


def test_text_cache_on_a_full_tmpfs_raises_disk_full_and_leaves_nothing(tmpfs):
    case = result(tmpfs, "text cache")
    assert case["raised"] == "DiskFull" and case["message"].startswith("disk full while writing ")
    assert case["message"].split(" while writing ")[1].split(":")[0].endswith(".safetensors")
    # the error safetensors really raises, which tests/support/faults.py's injected one copies
    assert case["cause"] == f"SafetensorError({SAFETENSORS_FULL!r})"
    assert case["left"] == []


def test_snapshot_to_a_full_tmpfs_logs_one_line_and_leaves_nothing(tmpfs):
    case = result(tmpfs, "snapshot")
    assert case["raised"] is None  # the bots keep running
    line, = case["log"]
    assert line["level"] == "WARNING" and not line["exc"]
    assert line["message"].startswith(f"queue snapshot to {tmpfs / 'mnt' / 'snapshot' / 'queue.sqlite3'} failed, "
                                      "out of disk space: disk full while writing ")
    assert case["left"] == []  # no half snapshot on the mount


def test_download_to_a_full_tmpfs_raises_disk_full_and_keeps_whole_files_only(tmpfs):
    case = result(tmpfs, "download")
    assert case["raised"] == "DiskFull", case.get("traceback")
    assert case["message"].startswith(f"disk full while writing {tmpfs / 'mnt' / 'download' / 'LowNoise' / 'low.gguf'}")
    assert case["cause"] == f"OSError({errno.ENOSPC}, 'No space left on device')"
    assert not [p for p in case["left"] if "low" in p]  # nothing at the final name
    # the hub removes its temp file (huggingface_hub 2.x); older ones keep it in blobs/ to resume from
    assert all(Path(p).parent.name == "blobs" for p in case["left"] if p.endswith(".incomplete"))
    assert any(p.endswith("snapshots/0123456789abcdef0123456789abcdef01234567/HighNoise/high.gguf")
               for p in case["left"])  # the file that fitted is kept whole
