"""mp4 writing: H.264 yuv420p with faststart, odd sizes, atomic writes, stitching."""
from __future__ import annotations

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from engine.video import probe_num_frames, read_frames, stitch, write_mp4


def frames(n: int, h: int = 64, w: int = 112, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, h, w, 3)).astype(np.uint8)


def probe(path) -> str:
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True)
    return out.stderr


def test_h264_yuv420p_16fps_with_moov_first(tmp_path):
    path = write_mp4(frames(13), tmp_path / "a.mp4", fps=16)
    info = probe(path)
    assert "h264" in info and "yuv420p" in info and "16 fps" in info
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart
    assert probe_num_frames(path) == 13


def test_odd_sizes_are_padded_to_even(tmp_path):
    out = read_frames(write_mp4(frames(5, 63, 111), tmp_path / "odd.mp4"))
    assert out.shape == (5, 64, 112, 3)


def test_write_is_atomic(tmp_path):
    target = tmp_path / "seg.mp4"
    with pytest.raises(ValueError):
        write_mp4(np.zeros((0, 64, 64, 3), np.uint8), target)
    with pytest.raises(ValueError):
        write_mp4(np.zeros((3, 64, 64), np.uint8), target)
    write_mp4(frames(3), target)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.mp4"]  # no temp files left behind


def test_stitch_is_plain_concatenation(tmp_path):
    a = write_mp4(frames(13, seed=1), tmp_path / "a.mp4")
    b = write_mp4(frames(8, seed=2), tmp_path / "b.mp4")
    out = stitch([a, b], tmp_path / "story.mp4")
    assert probe_num_frames(out) == 21
    joined = read_frames(out)
    assert np.array_equal(joined[:13], read_frames(a)) and np.array_equal(joined[13:], read_frames(b))
    assert out.read_bytes().index(b"moov") < out.read_bytes().index(b"mdat")


def test_stitch_failure_leaves_no_output(tmp_path):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video")
    with pytest.raises(RuntimeError, match="concat"):
        stitch([bogus], tmp_path / "story.mp4")
    assert not (tmp_path / "story.mp4").exists()
