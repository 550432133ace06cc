"""Photo checks and preparation: specific errors for bad photos, EXIF, colour modes, orientation, crop."""
from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.photo import fit_photo, is_portrait, load_photo
from engine.svi import generate_story
from tests.support.engine_helpers import make_photo
from storage.config import Limits
from storage.errors import NotAnImage, PhotoTooLarge, PhotoTooSmall, TruncatedImage


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; only the header is ever read for the size check."""
    buf = bytearray(make_photo(64, 64))
    buf[16:20] = width.to_bytes(4, "big")
    buf[20:24] = height.to_bytes(4, "big")
    buf[29:33] = zlib.crc32(bytes(buf[12:29])).to_bytes(4, "big")  # IHDR CRC covers type + data
    return bytes(buf)


def truncated_jpeg() -> bytes:
    data = make_photo(300, 200, fmt="JPEG")
    return data[: len(data) * 2 // 3]  # header intact, scan data cut off


@pytest.mark.parametrize("data, error", [
    (b"this is not an image at all", NotAnImage),
    (truncated_jpeg(), TruncatedImage),
    (make_photo(63, 200), PhotoTooSmall),
    (huge_png_header(8000, 6000), PhotoTooLarge),  # 48 MP > 40 MP
])
def test_bad_photos_raise_their_specific_error(data, error, tiny_models, tiny_settings):
    with pytest.raises(error):
        load_photo(data)
    with pytest.raises(error):  # and the story refuses them before generating anything
        generate_story(tiny_models, data, ["walk"], tiny_settings)


def test_photo_path_is_accepted(tmp_path):
    path = tmp_path / "p.png"
    path.write_bytes(make_photo(100, 80))
    assert load_photo(path).size == (100, 80)


def test_exif_orientation_is_applied():
    img = Image.open(io.BytesIO(make_photo(300, 200, fmt="JPEG")))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    upright = load_photo(buf.getvalue())
    assert upright.size == (200, 300)
    assert is_portrait(upright)


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "L"])
def test_colour_modes_become_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = load_photo(make_photo(120, 90, fmt=fmt, mode=mode))
    assert img.mode == "RGB" and img.size == (120, 90)


def test_transparent_pixels_become_white():
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[:40, :, :3] = 10
    rgba[:40, :, 3] = 255  # top half opaque and dark, bottom half fully transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    arr = np.asarray(load_photo(buf.getvalue()))
    assert np.all(arr[:40] == 10) and np.all(arr[40:] == 255)


def test_fit_photo_covers_and_crops_the_centre():
    arr = np.zeros((100, 400, 3), np.uint8)
    arr[:, 150:250] = 255  # a white band in the centre
    out = fit_photo(Image.fromarray(arr), width=112, height=64)
    assert out.size == (112, 64)
    got = np.asarray(out)
    # scaled to 256x64, cropped to the middle 112 columns: the band (96..160) sits 40..104 in the crop
    assert got[:, 56].min() > 200 and got[:, 5].max() < 50


def test_limits_are_the_storage_limits():
    assert Limits().max_photo_pixels == 40_000_000 and Limits().min_photo_side == 64
