"""`svibot story` as a user runs it: one story end to end on the tiny preset, and bad input refused."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.video import read_frames

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "chelsea.jpg"


def test_story_cli_json(tmp_path):
    out = tmp_path / "out" / "story.mp4"
    env = {**os.environ, "SVIBOT_DATA_DIR": str(tmp_path / "data")}
    env.pop("SVIBOT_PRESET", None)
    proc = subprocess.run([sys.executable, "-m", "svibot.cli", "story", str(PHOTO), "walk | run | fly",
                           "--preset", "tiny", "--seed", "3", "--out", str(out), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "random weights" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["state"] == "done" and result["preset"] == "tiny"
    assert [len(read_frames(p)) for p in result["segments"]] == result["frames"] == [13, 8, 8]
    assert len(read_frames(out)) == result["final_frames"] == 29
    lines = proc.stdout.splitlines()
    assert [l.split(":")[0] for l in lines[:3]] == ["segment 1/3", "segment 2/3", "segment 3/3"]


@pytest.mark.parametrize("argv, code, message", [
    (["story", str(PHOTO), "walk || run"], 2, "Prompt 2 of 3 is empty"),
    (["story", str(PHOTO), " | ".join("x" * 11)], 2, "11 segments; the limit is 10"),
    (["story", "/nonexistent.jpg", "walk"], 2, "cannot read the photo"),
    (["story", str(REPO / "pyproject.toml"), "walk"], 2, "not an image"),
    (["story", str(PHOTO), "walk", "--preset", "q9_z"], 2, "preset must be one of"),
    (["story", str(PHOTO), "walk", "--preset", "tiny", "--steps", "0"], 2, "num_inference_steps must be in [1, 100] but is 0"),
    (["story", str(PHOTO), "walk", "--preset", "tiny", "--loop", "--loop-strength", "1.5"], 2,
     "loop_strength is 1.5: the loop strength must be above 0 and at most 1"),
    (["story", str(PHOTO), "walk", "--color-match", "sepia"], 2, "argument --color-match: invalid choice: 'sepia'"),
])
def test_story_cli_bad_input(tmp_path, argv, code, message):
    env = {**os.environ, "SVIBOT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "svibot.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == code
    assert message in proc.stderr
    db = tmp_path / "data" / "queue.sqlite3"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


def test_story_cli_quality_runs_the_quality_recipe(tmp_path):
    env = {**os.environ, "SVIBOT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "svibot.cli", "story", str(PHOTO), "walk", "--preset", "tiny",
                           "--quality", "quality", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["state"] == "done"
    with sqlite3.connect(tmp_path / "data" / "queue.sqlite3") as conn:
        (settings,) = conn.execute("SELECT settings FROM jobs").fetchone()
        payloads = [json.loads(p) for (p,) in conn.execute("SELECT payload FROM events WHERE kind = 'progress'")]
    assert json.loads(settings)["quality"] == "quality"
    assert payloads and {p["num_steps"] for p in payloads} == {50}  # SVI 2.0 Pro's 50 steps, not fast's 4


def test_story_flags_become_job_settings(tmp_path):
    from svibot.cli import build_parser
    from svibot.config import build_config
    from svibot.story import story_settings

    argv = ["--data-dir", str(tmp_path), "story", str(PHOTO), "walk", "--preset", "tiny", "--quality", "quality",
            "--guidance", "4", "--guidance-low", "1", "--steps", "30"]
    args = build_parser().parse_args(argv)
    settings = story_settings(build_config(args, {}), args)
    assert settings == {"seed": 0, "preset": "tiny", "quality": "quality", "num_inference_steps": 30,
                        "guidance_high": 4.0, "guidance_low": 1.0}


def test_story_cli_loop_ends_on_the_first_frame(tmp_path):
    env = {**os.environ, "SVIBOT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "svibot.cli", "story", str(PHOTO), "walk | run", "--preset", "tiny",
                           "--loop", "--loop-strength", "0.9", "--color-match", "anchor", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # svi-pro on tiny's 13 frames: 13, then 13 - 5 at the seam - 4 repeating the first frame at the loop's end
    assert result["frames"] == [13, 4] and result["final_frames"] == 17
    with sqlite3.connect(tmp_path / "data" / "queue.sqlite3") as conn:
        (settings,) = conn.execute("SELECT settings FROM jobs").fetchone()
    assert {k: json.loads(settings)[k] for k in ("loop", "loop_strength", "color_match")} == {
        "loop": True, "loop_strength": 0.9, "color_match": "anchor"}


def test_story_options_stay_out_of_the_settings_unless_given(tmp_path):
    from svibot.cli import build_parser
    from svibot.config import build_config
    from svibot.story import story_settings

    args = build_parser().parse_args(["--data-dir", str(tmp_path), "story", str(PHOTO), "walk", "--preset", "tiny"])
    assert not {"loop", "loop_strength", "color_match"} & set(story_settings(build_config(args, {}), args))
