"""Checks a resumed job runs on the files earlier attempts left: a carry latent or a segment video
that cannot be read (a truncated write on a full disk, bit rot, a copy cut short) is made again
from the segment before it instead of failing the story."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def load_carry(path: Path) -> torch.Tensor | None:
    """The carry latent saved at `path`, or None when the file is missing or damaged."""
    try:
        carry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle errors... for a damaged zip
        log.warning("carry latent %s is unreadable (%s: %s); its segment will be made again",
                    path, type(err).__name__, err)
        return None
    if not isinstance(carry, torch.Tensor):
        log.warning("carry latent %s holds a %s, not a tensor; its segment will be made again", path, type(carry))
        return None
    return carry


def carry_bytes(carry: torch.Tensor) -> bytes:
    """The bytes `load_carry` reads back; written with `atomic_write_bytes` so a full disk leaves
    no half file."""
    buf = io.BytesIO()
    torch.save(carry.detach().cpu().contiguous().clone(), buf)
    return buf.getvalue()


def video_ok(path: Path, num_frames: int) -> bool:
    """True when the mp4 at `path` decodes to `num_frames` frames."""
    from .video import probe_num_frames

    try:
        found = probe_num_frames(path)
    except Exception as err:  # ffmpeg fails on a truncated or missing file
        log.warning("segment video %s is unreadable (%s); it will be made again", path, err)
        return False
    if found != num_frames:
        log.warning("segment video %s has %d frames, not %d; it will be made again", path, found, num_frames)
        return False
    return True
