"""Input photo preparation: check, fix orientation and colour mode, then resize and centre-crop."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from storage.config import Limits
from storage.validate import check_photo


def load_photo(photo: bytes | Path, limits: Limits = Limits()) -> Image.Image:
    """Return the photo as an upright RGB image; bad photos raise `storage.errors.InputError`."""
    data = Path(photo).read_bytes() if isinstance(photo, (str, Path)) else bytes(photo)
    check_photo(data, limits)
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)  # phones store portraits as rotated landscapes plus a tag
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGBA, LA and P-with-transparency go onto white (the usual sticker/PNG look); CMYK, L, etc. convert."""
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def is_portrait(img: Image.Image) -> bool:
    width, height = img.size
    return height > width


def fit_photo(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the photo covers width x height, then crop the centre; nothing is stretched."""
    src_w, src_h = img.size
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


def image_to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)  # (H, W, 3)
