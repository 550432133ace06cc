"""Fit a video under a platform's upload limit by re-encoding it at a lower bitrate.

Uses the ffmpeg binary that imageio-ffmpeg ships, in a subprocess so the event loop keeps running.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import imageio_ffmpeg

log = logging.getLogger(__name__)

MIN_KBPS = 150  # below this H.264 at 480p is mush; refusing is kinder than sending it
HEADROOM = 0.90  # container overhead and rate-control overshoot eat a few percent


def video_duration(path: Path) -> float:
    """Seconds of video in `path`, read by decoding it (exact for our short clips)."""
    _, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    return float(seconds)


def target_kbps(max_bytes: int, duration_s: float, headroom: float = HEADROOM) -> int:
    """The video bitrate that makes `duration_s` seconds fit in `max_bytes`."""
    if duration_s <= 0:
        raise ValueError(f"duration_s is {duration_s}; it must be above 0")
    return int(max_bytes * 8 * headroom / duration_s / 1000)


async def reencode(src: Path, dst: Path, kbps: int) -> None:
    """Re-encode `src` to H.264 at about `kbps` kbit/s, without audio, streamable (faststart)."""
    args = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src),
        "-c:v", "libx264", "-preset", "veryfast", "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k",
        "-bufsize", f"{2 * kbps}k", "-pix_fmt", "yuv420p", "-an", "-movflags", "+faststart", str(dst),
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {src} (exit {proc.returncode}): {stderr.decode(errors='replace')[-500:]}")


async def fit_video(src: Path, max_bytes: int, dst: Path | None = None, *, min_kbps: int = MIN_KBPS,
                    attempts: int = 2) -> Path | None:
    """Return a video no bigger than `max_bytes`: `src` itself if it fits, else a re-encode at `dst`.

    Returns None when even `min_kbps` would not fit, or the re-encodes stay too big.
    `dst` defaults to "<name>.fit.mp4" beside `src`.
    """
    src = Path(src)
    size = src.stat().st_size
    if size <= max_bytes:
        return src
    dst = Path(dst) if dst is not None else src.with_name(f"{src.stem}.fit.mp4")
    if dst.exists() and dst.stat().st_size <= max_bytes and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst  # re-encoded before a restart
    duration = await asyncio.to_thread(video_duration, src)
    kbps = target_kbps(max_bytes, duration)
    for _ in range(attempts):
        if kbps < min_kbps:
            log.info("%s (%d bytes, %.1f s) cannot fit %d bytes above %d kbit/s", src, size, duration,
                     max_bytes, min_kbps)
            return None
        await reencode(src, dst, kbps)
        got = dst.stat().st_size
        if got <= max_bytes:
            log.info("re-encoded %s from %d to %d bytes at %d kbit/s", src, size, got, kbps)
            return dst
        kbps = int(kbps * max_bytes / got * HEADROOM)  # overshot: scale down by how much
    dst.unlink(missing_ok=True)
    return None
