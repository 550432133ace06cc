"""Damaged files heal on resume: a truncated carry latent makes its segment again from the one before
it; a truncated segment video is made again before stitching. Both end equal to an uninterrupted run."""
from __future__ import annotations

import numpy as np
import pytest

from svibot.cli import main
from tests.support.faults import DiskFault, job_rows, segment_rows

from .conftest import final_frames, story_argv, worker_once_argv


@pytest.mark.parametrize("damaged", ["carry_001.pt", "segment_000.mp4"])
def test_damaged_file_is_made_again_on_resume(damaged, tmp_path, monkeypatch, capsys, reference):
    data = tmp_path / "data"
    with monkeypatch.context() as m:  # stop before the stitch, both segments recorded
        DiskFault("file", "story.mp4").install(m)
        assert main(story_argv(data)) == 1
    assert len(segment_rows(data / "queue.sqlite3", 1)) == 2
    path = data / "jobs" / "000001" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # a write cut short
    assert main(worker_once_argv(data)) == 0
    assert job_rows(data / "queue.sqlite3")[0][1] == "done"
    np.testing.assert_array_equal(final_frames(data), reference)
    capsys.readouterr()
