"""MP4 in and out through imageio-ffmpeg: H.264, yuv420p, +faststart, written atomically."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from storage.files import atomic_path


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides; repeat the last row/column rather than scale."""
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def write_mp4(frames: np.ndarray, path: Path, fps: int = 16) -> Path:
    """Write (F, H, W, 3) uint8 frames as an H.264 mp4 that plays in Telegram, Discord and browsers."""
    import imageio_ffmpeg

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8 but are {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("frames is empty; an mp4 needs at least one frame")
    frames = _even(frames)
    _, h, w, _ = frames.shape
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8,
            macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],  # moov atom first, so players start before the end arrives
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    return path


def stitch(paths: list[Path], out: Path) -> Path:
    """Concatenate segment mp4s without re-encoding (ffmpeg concat demuxer, stream copy)."""
    import imageio_ffmpeg

    if not paths:
        raise ValueError("stitch needs at least one segment video")
    out = Path(out)
    with atomic_path(out) as tmp:
        # The list sits beside the temp output and is named after it, so a process killed mid-stitch
        # leaves only files that the next worker's sweep of the job folder removes.
        listing = tmp.with_name(tmp.name + ".txt")
        # The concat demuxer reads single-quoted paths; a quote inside is written as '\''.
        lines = ["file '" + str(Path(p).resolve()).replace("'", "'\\''") + "'" for p in paths]
        try:
            listing.write_text("\n".join(lines) + "\n")
            cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
                   "-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True)
        finally:
            listing.unlink(missing_ok=True)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg concat of {len(paths)} segments failed: {done.stderr.strip()}")
    return out


def read_frames(path: Path) -> np.ndarray:
    """Decode a video to (F, H, W, 3) uint8."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def probe_num_frames(path: Path) -> int:
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]
