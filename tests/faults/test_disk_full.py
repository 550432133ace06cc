"""A full disk at every write point ends the same way: `svibot story` exits 1 with one line naming
the data dir and the free space needed, no traceback, no half-written file, an intact database with
nothing recorded that is not on disk; after the space is back `svibot worker --once` finishes the
story with the same frames as an uninterrupted run."""
from __future__ import annotations

import errno
import sqlite3

import numpy as np
import pytest

from svibot.cli import main
from tests.support.faults import Both, DiskFault, TextCacheFull, half_written, integrity, job_rows, segment_rows

from .conftest import final_frames, story_argv, worker_once_argv

# (case, fault, what the story command ends with, segments on disk when it stops)
MATRIX = [
    ("photo store", DiskFault("file", "*.jpg"), 1, None),
    ("database creation", DiskFault("commit", "CREATE TABLE"), 1, None),
    ("enqueue commit", DiskFault("commit", "photo_sha256, prompts"), 1, None),
    ("claim commit", DiskFault("commit", "state = 'running'"), 1, 0),
    ("progress commit", DiskFault("commit", "'progress'"), 1, 0),
    ("prompt-embedding cache", TextCacheFull(), 1, 0),
    ("segment 1 mp4", DiskFault("file", "segment_000.mp4"), 1, 0),
    ("segment 2 carry", DiskFault("file", "carry_001.pt"), 1, 1),
    ("segment 2 commit", DiskFault("commit", "INSERT INTO segments"), 1, 0),
    # the pause does not fit either: segment 2's unrecorded mp4 is removed and the pause tried again
    ("segment 2 carry, then the pause", Both(DiskFault("file", "carry_001.pt"),
                                              DiskFault("commit", '"paused"')), 1, 1),
    ("stitch", DiskFault("file", "story.mp4"), 1, 2),
    ("done commit", DiskFault("commit", "('done', None"), 1, 2),
    ("outbox commit", DiskFault("commit", "SET delivered_at"), 1, None),
    ("worker_gone commit", DiskFault("commit", "DELETE FROM workers WHERE worker_id"), 0, 2),
]


@pytest.mark.parametrize("fault, code, kept", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_full_disk_at_each_write_point(fault, code, kept, tmp_path, monkeypatch, capsys, reference):
    data = tmp_path / "data"
    with monkeypatch.context() as m:
        fault.install(m)
        rc = main(story_argv(data))
    err = capsys.readouterr().err
    assert fault.fired, "the write point was never reached"
    assert rc == code, err
    assert "Traceback" not in err
    full = [line for line in err.splitlines() if "out of disk space" in line]
    if code == 1:
        assert len(full) == 1, err
        assert full[0].startswith(f"svibot: the data dir {data} is out of disk space (")
        assert "free at least 256 MiB" in full[0] and "svibot worker --once" in full[0]
    else:
        assert full == []  # the story finished; only unregistering the worker failed
    assert half_written(data) == []
    assert integrity(data / "queue.sqlite3") == "ok"

    jobs = job_rows(data / "queue.sqlite3")
    if not jobs:  # refused before anything was queued: the photo is not kept either
        assert not any((data / "photos").rglob("*.jpg")) if (data / "photos").exists() else True
        assert main(story_argv(data)) == 0
    else:
        (job_id, state, attempts), = jobs
        assert attempts == 0  # a full disk is not the job's fault
        segments = segment_rows(data / "queue.sqlite3", job_id)
        if kept is not None:
            assert len(segments) == kept
        for _, video, carry in segments:  # every recorded file is whole on disk
            assert (data / video).stat().st_size > 0 and (data / carry).stat().st_size > 0
        if state != "done":
            assert state == "queued"
            with sqlite3.connect(data / "queue.sqlite3") as conn:
                kinds = [k for (k,) in conn.execute("SELECT payload FROM events WHERE job_id = ?", (job_id,))]
            kinds = ["paused" if '"paused"' in k else "" for k in kinds]
            claimed = fault.target not in ("state = 'running'", "SET delivered_at")
            assert ("paused" in kinds) == claimed  # the chat hears why its story stopped
            assert main(worker_once_argv(data)) == 0
            capsys.readouterr()
    assert job_rows(data / "queue.sqlite3")[0][1] == "done"
    np.testing.assert_array_equal(final_frames(data), reference)
