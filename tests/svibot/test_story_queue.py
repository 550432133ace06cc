"""`svibot story` runs its own job: earlier jobs are left for `svibot worker` and said so; missing
model files are named before anything is queued; `--download` fetches them first; `--no-worker`
follows a warm worker that keeps its models loaded, and an interrupt cancels the job."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.models.presets import PRESETS, Preset
from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig
from svibot.cli import main
from tests.engine.models.test_real_preset_path import tiny_repo, tiny_repo_files  # noqa: F401 (fixture)
from tests.support.fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "chelsea.jpg"


async def _queue_jobs(root: Path, *platforms: str) -> list[int]:
    data = DataDir(root)
    async with await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos) as q:
        return [(await q.enqueue(NewJob(p, "c", "u", PHOTO.read_bytes(), ["earlier", "story"],
                                        {"seed": 1, "preset": "tiny"}), Limits())).id for p in platforms]


async def _states(root: Path) -> dict[int, tuple[str, int]]:
    data = DataDir(root)
    async with await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos) as q:
        return {j.id: (j.state, len(await q.segments(j.id))) for j in await q.list_jobs()}


def _cli(root: Path, *argv: str, **kw) -> list[str]:
    return [sys.executable, "-m", "svibot.cli", "--data-dir", str(root), *argv]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SVIBOT_DEVICE": "cpu"}
    env.pop("SVIBOT_PRESET", None)
    return env


def test_story_runs_its_own_job_and_leaves_earlier_ones_for_the_worker(tmp_path):
    root = tmp_path / "data"
    earlier = asyncio.run(_queue_jobs(root, "telegram"))
    proc = subprocess.run(_cli(root, "story", str(PHOTO), "walk", "--preset", "tiny"), capture_output=True,
                          text=True, timeout=180, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"earlier job(s) #{earlier[0]} (telegram, queued, 0/2 segments done) stay in the queue" in proc.stderr
    states = asyncio.run(_states(root))
    assert states[earlier[0]] == ("queued", 0)  # untouched: `svibot worker` runs it
    assert states[earlier[0] + 1] == ("done", 1)


def test_missing_files_on_a_gpu_are_named_with_sizes_before_anything_is_queued(tmp_path, monkeypatch, capsys):
    import engine.models.fit

    # A fake GPU with room for q4_k_m: the default preset becomes q4_k_m, and nothing is downloaded yet.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engine.models.fit, "default_budgets", lambda: (40 * 2**30, 64 * 2**30))
    monkeypatch.delenv("SVIBOT_PRESET", raising=False)
    root = tmp_path / "data"
    assert main(["--data-dir", str(root), "story", str(PHOTO), "walk"]) == 1
    err = capsys.readouterr().err
    preset = PRESETS["q4_k_m"]
    assert f"preset q4_k_m needs 9 model file(s) that are not in {root / 'models'} yet" in err
    for part, repo, target in preset.files.items():
        assert f"{preset.sizes[part] / 1e9:6.2f} GB  {repo}/{target}" in err, part
    assert "svibot download --preset q4_k_m" in err and "--download" in err
    assert not (root / "queue.sqlite3").exists()


def test_download_flag_fetches_the_files_then_runs_the_story(tiny_repo, tmp_path, monkeypatch, capsys):  # noqa: F811
    repos, configs = tiny_repo
    preset = Preset(name="tiny_gguf", files=tiny_repo_files(), sizes={"high": 1_000_000},
                    settings=replace(PRESETS["tiny"].settings, num_frames=9), config_dir=configs)
    monkeypatch.setitem(PRESETS, "tiny_gguf", preset)
    monkeypatch.setenv("SVIBOT_DEVICE", "cpu")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    root = tmp_path / "data"
    argv = ["--data-dir", str(root), "story", str(PHOTO), "walk", "--preset", "tiny_gguf"]
    assert main(argv) == 1
    assert "needs 9 model file(s)" in capsys.readouterr().err
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert main([*argv, "--download"]) == 0
    out = capsys.readouterr()
    assert "downloading" in out.err and "for preset tiny_gguf first" in out.err
    assert len(hub.downloads) >= 9 and "story: " in out.out
    assert asyncio.run(_states(root)) == {1: ("done", 1)}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_no_worker_stories_share_one_warm_worker_and_an_interrupt_cancels(tmp_path):
    root = tmp_path / "data"
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(_cli(root, "worker", "--preset", "tiny"), stdout=out, stderr=out, env=_env(),
                                  cwd=REPO)
    try:
        for story in ("walk", "fly"):
            proc = subprocess.run(_cli(root, "story", str(PHOTO), story, "--preset", "tiny", "--no-worker"),
                                  capture_output=True, text=True, timeout=180, env=_env(), cwd=REPO)
            assert proc.returncode == 0, proc.stderr
            assert "story: " in proc.stdout and "loading preset" not in proc.stderr
        assert log.read_text().count("loading preset") == 1  # the second story reused the loaded models

        # A long story, interrupted after its first segment: it is cancelled, not left to hold up the next.
        slow = subprocess.Popen(_cli(root, "story", str(PHOTO), "a | b | c | d", "--preset", "tiny", "--steps", "12",
                                     "--no-worker"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env(), cwd=REPO)
        _wait_for(lambda: asyncio.run(_states(root)).get(3, ("", 0))[1] >= 1, 120, "segment 1 of the slow story")
        slow.send_signal(signal.SIGINT)
        _, err = slow.communicate(timeout=60)
        assert slow.returncode == 130 and "job #3 cancelled" in err
        started = time.monotonic()
        proc = subprocess.run(_cli(root, "story", str(PHOTO), "swim", "--preset", "tiny", "--no-worker"),
                              capture_output=True, text=True, timeout=180, env=_env(), cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        states = asyncio.run(_states(root))
        assert states[3][0] == "cancelled" and states[3][1] < 4 and states[4] == ("done", 1)
        assert time.monotonic() - started < 60
        assert log.read_text().count("loading preset") == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
