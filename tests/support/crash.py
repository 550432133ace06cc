"""Real `kill -9` at a named step boundary of a child process, for the crash matrix.

`child_env(point, mark)` gives a child process the environment that arms `point`: the folder holding
a `sitecustomize.py` goes first on PYTHONPATH, and that module calls `arm` at interpreter start-up.
`arm` wraps the one function at the boundary; when the boundary is reached the process writes the
point's name to `mark` (so the test knows where it died) and sends itself SIGKILL: no `finally`,
no atexit, no flush, exactly what a power cut or the OOM killer leaves.

Points (segment points are at the story's last segment, index 1, so a resume starts from a carry):
  segment-files      segment 2's mp4 and carry latent are in place; the row is not written yet
  segment-row        inside the transaction recording segment 2: its row is inserted, its
                     "segment" event not yet, nothing committed
  stitch             the stitched story is whole in its temp file, not yet renamed to story.mp4
  delivery           Telegram accepted segment 2's video; the outbox has not marked it delivered
"""
from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

HOOKS = Path(__file__).resolve().parent / "crashpoints"
REPO = Path(__file__).resolve().parents[2]
SEGMENT = 1  # the story's last segment
POINTS = ("segment-files", "segment-row", "stitch", "delivery")


def child_env(point: str | None, mark: Path | None, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("SVIBOT_TEST_CRASH_AT", None)
    if point is not None:
        env["SVIBOT_TEST_CRASH_AT"] = point
        env["SVIBOT_TEST_CRASH_MARK"] = str(mark)
    return env


def _die(point: str, mark: str | None) -> None:
    if mark:
        fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, point.encode())
        os.fsync(fd)
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, mark: str | None) -> None:
    if point not in POINTS:
        raise ValueError(f"SVIBOT_TEST_CRASH_AT must be one of {POINTS}, not {point!r}")
    die = functools.partial(_die, point, mark)
    if point == "segment-files":
        from engine.worker import Worker

        write = Worker._write_segment

        def write_segment(self, job, seg, settings):
            written = write(self, job, seg, settings)
            if seg.index == SEGMENT:
                die()
            return written

        Worker._write_segment = write_segment
    elif point == "segment-row":
        from storage.leases import LeaseVerbs

        emit = LeaseVerbs._emit

        async def emit_event(self, s, job, kind, payload):
            if kind == "segment" and payload["index"] == SEGMENT:
                die()  # the INSERT INTO segments ran in this transaction; the event's INSERT would be next
            return await emit(self, s, job, kind, payload)

        LeaseVerbs._emit = emit_event
    elif point == "stitch":
        replace = os.replace

        def replace_or_die(src, dst, *a, **kw):
            if Path(dst).name == "story.mp4":
                die()
            return replace(src, dst, *a, **kw)

        os.replace = replace_or_die
    else:  # delivery
        from bot.telegram import TelegramDeliverer

        send = TelegramDeliverer.send_video

        async def send_video(self, job, path, caption):
            message_id = await send(self, job, path, caption)
            if caption.startswith(f"Segment {SEGMENT + 1}/"):
                die()
            return message_id

        TelegramDeliverer.send_video = send_video
