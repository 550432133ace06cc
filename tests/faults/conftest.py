"""Shared pieces of the fault matrix: the story every case runs and its uninterrupted result."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.video import read_frames
from svibot.cli import main

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "chelsea.jpg"
STORY = "walk | run"  # two segments: a resume starts from segment 2's carry
STORY_FLAGS = ["--preset", "tiny", "--seed", "3", "--steps", "1"]  # one step: the matrix stays fast


def story_argv(data: Path) -> list[str]:
    return ["--data-dir", str(data), "--log-level", "ERROR", "story", str(PHOTO), STORY, *STORY_FLAGS]


def worker_once_argv(data: Path) -> list[str]:
    return ["--data-dir", str(data), "--log-level", "ERROR", "worker", "--once", "--preset", "tiny"]


def final_frames(data: Path, job_id: int = 1) -> np.ndarray:
    return read_frames(data / "jobs" / f"{job_id:06d}" / "story.mp4")


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> np.ndarray:
    """The stitched frames of the story run without any fault."""
    data = tmp_path_factory.mktemp("reference")
    assert main(story_argv(data)) == 0
    return final_frames(data)
